//! Moved to `lookout_testkit::containers`; depend on `lookout-testkit` and use it from there.
//! This re-export only keeps `#[path]` includes in tests still being written compiling;
//! delete it once nothing includes it.

pub use lookout_testkit::containers::*;
