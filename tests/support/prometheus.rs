//! Moved to `lookout_testkit::prometheus` (and `free_port` to `lookout_testkit::net`);
//! depend on `lookout-testkit` and use them from there. This re-export only keeps `#[path]`
//! includes in tests still being written compiling; delete it once nothing includes it.

pub use lookout_testkit::net::free_port;
pub use lookout_testkit::prometheus::*;
