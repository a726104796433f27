//! The runner behind the stable shadows of the fuzz targets: `agent/tests/parsers_never_panic.rs`
//! and `proxy/tests/parsers_never_panic.rs` include this file (`#[path]`) next to their crate's
//! harness module. It is not a module of the `lookout-fuzz` crate; libFuzzer needs none of it.
//!
//! For each [`Target`] it runs the seed corpus, the hand-picked extras, deeply [`nested`]
//! inputs and [`MUTATIONS`] deterministic mutants of the seeds (a fixed-seed xorshift PRNG:
//! bit flips, truncations, deletions, duplications, splices between seeds, insertions of
//! separators, numbers that overflow `u32`/`u64`, escapes, non-ASCII text and the target's
//! own dictionary), on a worker thread with a [`DEADLINE`]. [`check_seed_lists`] keeps the
//! tests' seed lists, `fuzz/seeds/` and `fuzz/fuzz_targets/` in step.

use std::collections::BTreeSet;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

/// Mutants per target.
pub const MUTATIONS: usize = 4000;
/// Mutants larger than this are cut back: beyond a few lines, size adds time, not coverage.
const MAX_LEN: usize = 8 * 1024;
/// How long one target may take before it counts as hung (generous: debug build, busy CI).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The fuzz targets shadowed by `agent/tests/parsers_never_panic.rs`.
pub const AGENT_TARGETS: [&str; 7] = [
    "procfs",
    "cgroupfs",
    "runtime_state",
    "state_file",
    "http_inputs",
    "config",
    "naming",
];

/// The fuzz targets shadowed by `proxy/tests/parsers_never_panic.rs`.
pub const PROXY_TARGETS: [&str; 4] = ["host_sni", "tenants_file", "credentials", "sd_query"];

/// A fuzz target as the shadow tests run it.
pub struct Target {
    /// Name of the `fuzz_targets/` binary and of its seed directory.
    pub name: &'static str,
    /// The harness.
    pub run: fn(&[u8]),
    /// `fuzz/seeds/<name>/*`, embedded at compile time.
    pub seeds: &'static [(&'static str, &'static [u8])],
    /// Hand-picked edge cases and regression inputs, run as they are.
    pub extra: &'static [&'static [u8]],
    /// Tokens worth inserting for this target's grammar, on top of [`TOKENS`] and
    /// [`HUGE_NUMBERS`] (empty: those alone).
    pub dictionary: &'static [&'static [u8]],
}

/// Bytes worth inserting into any target's inputs: separators, boundary numbers, signs,
/// escapes, and text that is whitespace to `str::trim` but not to `split_ascii_whitespace`.
pub const TOKENS: &[&[u8]] = &[
    b":",
    b" ",
    b"\n",
    b"\t",
    b"\r\n",
    b"=",
    b",",
    b";",
    b"&",
    b"-",
    b"-1",
    b"0",
    b"1",
    b"7",
    b"9",
    b"1e308",
    b"inf",
    b"NaN",
    b"max",
    b"total=",
    b"q=",
    b" - ",
    b"(",
    b")",
    b"\\",
    b"\\040",
    b"\\777",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\0",
    b"\xff",
    "é".as_bytes(),
    "🦀".as_bytes(),
    "\u{85}".as_bytes(),
    "\u{2028}".as_bytes(),
    "\u{3000}".as_bytes(),
    "\u{feff}".as_bytes(),
    "\u{130}".as_bytes(),
];

/// Numbers at the edges of `u32`, `u64` and the v1 "unlimited" sentinel, and past them.
pub const HUGE_NUMBERS: &[&[u8]] = &[
    b"4294967295",
    b"4294967296",
    b"4611686018427387904",
    b"9223372036854771712",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999999999999",
];

/// xorshift64: tiny, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// Uniform-ish in `0..n`; `n` must not be zero.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A position in `0..=len` (an insertion point or a cut).
    fn at(&mut self, len: usize) -> usize {
        self.below(len + 1)
    }
}

/// Applies one random mutation to `data`; the target's seeds feed splices, its dictionary
/// insertions.
fn mutate(rng: &mut Rng, data: &mut Vec<u8>, target: &Target) {
    let seeds = target.seeds;
    match rng.below(9) {
        // Flip one bit.
        0 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] ^= 1 << rng.below(8);
        }
        // Overwrite a byte with anything.
        1 if !data.is_empty() => {
            let i = rng.below(data.len());
            data[i] = rng.next() as u8;
        }
        // Truncate.
        2 => {
            let n = rng.at(data.len());
            data.truncate(n);
        }
        // Delete a range.
        3 if !data.is_empty() => {
            let a = rng.below(data.len());
            let b = a + rng.at((data.len() - a).min(32));
            data.drain(a..b);
        }
        // Duplicate a range somewhere else.
        4 if !data.is_empty() => {
            let a = rng.below(data.len());
            let b = a + rng.at((data.len() - a).min(64));
            let chunk = data[a..b].to_vec();
            let at = rng.at(data.len());
            data.splice(at..at, chunk);
        }
        // Splice in a piece of another seed of the same target.
        5 => {
            let (_, other) = seeds[rng.below(seeds.len())];
            if !other.is_empty() {
                let a = rng.below(other.len());
                let b = a + rng.at((other.len() - a).min(128));
                let at = rng.at(data.len());
                data.splice(at..at, other[a..b].iter().copied());
            }
        }
        // Replace the number at a random place with an extreme one.
        6 if !data.is_empty() => {
            let start = rng.below(data.len());
            let end = start
                + data[start..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
            let huge = HUGE_NUMBERS[rng.below(HUGE_NUMBERS.len())];
            data.splice(start..end, huge.iter().copied());
        }
        // Insert a token, a huge number or a dictionary entry (twice as likely as the
        // others: it makes the interesting inputs).
        _ => {
            let common = TOKENS.len() + HUGE_NUMBERS.len();
            let token = match rng.below(common + target.dictionary.len()) {
                i if i < TOKENS.len() => TOKENS[i],
                i if i < common => HUGE_NUMBERS[i - TOKENS.len()],
                i => target.dictionary[i - common],
            };
            let at = rng.at(data.len());
            data.splice(at..at, token.iter().copied());
        }
    }
    data.truncate(MAX_LEN);
}

/// Nesting depths of the [`nested`] inputs: past serde_json's (128) and toml's recursion
/// limits, up to what fits in libFuzzer's default 4096-byte inputs.
const NESTING: [usize; 3] = [100, 1000, 4000];

/// Deeply nested JSON, TOML and parentheses: a recursive parser without a depth limit would
/// overflow the stack, an abort no `catch_unwind` can turn into a test failure message, so
/// every target gets these (a crashed test binary still fails the run).
fn nested() -> impl Iterator<Item = Vec<u8>> {
    NESTING.into_iter().flat_map(|d| {
        [
            format!("{}{}", "[".repeat(d), "]".repeat(d)),
            format!("{}1{}", r#"{"a":"#.repeat(d), "}".repeat(d)),
            format!("a = {}{}", "[".repeat(d), "]".repeat(d)),
            format!("a = {}1{}", "{b = ".repeat(d), "}".repeat(d)),
            format!("{}x{}", "(".repeat(d), ")".repeat(d)),
        ]
        .map(String::into_bytes)
    })
}

/// Every input of a target, in order: seeds, extras, [`nested`] inputs, then mutants of the
/// seeds (round-robin, one to four stacked mutations each). The PRNG seed depends only on the
/// target's name.
fn inputs(target: &Target) -> impl Iterator<Item = Vec<u8>> + '_ {
    let seed = target.name.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut rng = Rng(seed | 1);
    let plain = target
        .seeds
        .iter()
        .map(|(_, s)| s.to_vec())
        .chain(target.extra.iter().map(|e| e.to_vec()))
        .chain(nested());
    let mutants = (0..MUTATIONS).map(move |i| {
        let (_, base) = target.seeds[i % target.seeds.len()];
        let mut data = base.to_vec();
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut data, target);
        }
        data
    });
    plain.chain(mutants)
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs every input of `target` through its harness on a worker thread, and fails with the
/// offending input (hex) on the first panic, or when the target overruns [`DEADLINE`].
pub fn exercise(target: &'static Target) {
    let current: Arc<Mutex<Vec<u8>>> = Arc::default();
    let worker = {
        let current = Arc::clone(&current);
        thread::Builder::new()
            .name(format!("fuzz-shadow-{}", target.name))
            .spawn(move || -> Result<usize, String> {
                let mut count = 0;
                for input in inputs(target) {
                    input.clone_into(&mut current.lock().unwrap_or_else(PoisonError::into_inner));
                    let outcome = panic::catch_unwind(AssertUnwindSafe(|| (target.run)(&input)));
                    if let Err(payload) = outcome {
                        return Err(format!(
                            "{} panicked: {}\n  input ({} bytes, hex): {}\n  input (lossy): {:?}",
                            target.name,
                            panic_message(payload.as_ref()),
                            input.len(),
                            hex(&input),
                            String::from_utf8_lossy(&input),
                        ));
                    }
                    count += 1;
                }
                Ok(count)
            })
            .expect("spawn a worker thread")
    };

    let started = Instant::now();
    while !worker.is_finished() {
        if started.elapsed() > DEADLINE {
            let stuck = current
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            panic!(
                "{} did not return within {DEADLINE:?} (hang?)\n  last input ({} bytes, hex): {}",
                target.name,
                stuck.len(),
                hex(&stuck),
            );
        }
        thread::sleep(Duration::from_millis(5));
    }
    match worker.join() {
        Ok(Ok(count)) => {
            let expected = target.seeds.len() + target.extra.len() + nested().count() + MUTATIONS;
            assert_eq!(count, expected, "{}: every input ran", target.name);
        }
        Ok(Err(failure)) => panic!("{failure}"),
        Err(payload) => panic!("worker died: {}", panic_message(payload.as_ref())),
    }
}

/// Checks that `targets` are exactly the shadowed targets named `mine` (one of
/// [`AGENT_TARGETS`], [`PROXY_TARGETS`]), that every `fuzz/fuzz_targets/*.rs` binary and every
/// `fuzz/seeds/*` directory belongs to one of the two lists, and that each of `targets`
/// embeds exactly the files of its seed directory — so a target or a seed added for the
/// fuzzer is not silently left out of CI, and a listed seed cannot go missing.
pub fn check_seed_lists(targets: &[&Target], mine: &[&str]) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let names = |dir: &Path, suffix: &str| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{} is readable: {e}", dir.display()))
            .map(|entry| {
                let name = entry.expect("directory entry").file_name();
                let name = name.to_str().expect("UTF-8 file name");
                name.strip_suffix(suffix).unwrap_or(name).to_string()
            })
            .collect()
    };

    let listed: BTreeSet<&str> = targets.iter().map(|t| t.name).collect();
    assert_eq!(
        listed,
        mine.iter().copied().collect(),
        "this test's targets"
    );
    let shadowed: BTreeSet<String> = AGENT_TARGETS
        .iter()
        .chain(&PROXY_TARGETS)
        .map(|t| t.to_string())
        .collect();
    assert_eq!(
        names(&fuzz.join("fuzz_targets"), ".rs"),
        shadowed,
        "fuzz_targets/ and the shadowed targets differ"
    );
    assert_eq!(
        names(&fuzz.join("seeds"), ""),
        shadowed,
        "seeds/ and the shadowed targets differ"
    );

    for t in targets {
        let on_disk = names(&fuzz.join("seeds").join(t.name), "");
        let embedded: BTreeSet<String> = t.seeds.iter().map(|(f, _)| f.to_string()).collect();
        assert_eq!(
            embedded, on_disk,
            "{}: seed list out of sync with fuzz/seeds/",
            t.name
        );
    }
}
