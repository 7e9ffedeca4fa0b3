//! Benchmark: reconciling a registry of about a million accounts against a
//! complete listing, in memory (`lifeboat::reconcile::merge_join`), plus
//! the sort `check` applies to the listing it collects.
//!
//! Run with `cargo bench --bench reconcile`. Plain `fn main` (harness =
//! false): it prints its own figures. Knobs (environment):
//!   LIFEBOAT_BENCH_RECONCILE_ACCOUNTS  accounts in the synthetic universe (default 1000000)
//!   LIFEBOAT_BENCH_ITERATIONS          timed iterations per measurement (default 10)
//!
//! The data set is deterministic (fixed seed): every account ID is
//! classified once, in exact shares of the universe — 97% present in both
//! lists, 1% missing (registry only), 0.5% recreated (listed with a newer
//! creation time), 0.5% deactivated, 1% new (listing only) — so the verdict
//! counts printed at the end can be checked exactly.

use std::hint::black_box;
use std::time::{Duration, Instant};

use lifeboat::reconcile::{Known, Listed, Report, Verdict, merge_join};
use lifeboat::registry::AccountState;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const SEED: u64 = 0x11FE_B0A7;
const LOSS_THRESHOLD: f64 = 0.5;
const WARMUP_ITERATIONS: usize = 2;
/// The goal stated for `merge_join` over a million accounts.
const GOAL: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Present,
    Missing,
    Recreated,
    Deactivated,
    New,
}

/// Expected class counts, in the order of `Kind`.
struct Mix {
    present: usize,
    missing: usize,
    recreated: usize,
    deactivated: usize,
    new: usize,
}

impl Mix {
    /// Exact shares of `universe`: 1% missing, 0.5% recreated, 0.5%
    /// deactivated, 1% new, the rest (97%) present.
    fn of(universe: usize) -> Mix {
        let missing = universe / 100;
        let recreated = universe / 200;
        let deactivated = universe / 200;
        let new = universe / 100;
        Mix { present: universe - missing - recreated - deactivated - new, missing, recreated, deactivated, new }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(text) => text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a whole number")),
        Err(_) => default,
    }
}

/// A plausible Matrix user ID: a random localpart (letters, digits and the
/// punctuation people use) made unique by a base-36 suffix, on one of a
/// few server names so the sort does not only compare localparts.
fn user_id(rng: &mut StdRng, index: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789._-";
    const SERVERS: [&str; 3] = ["example.org", "matrix.example.org", "lifeboat.test"];
    let len = rng.random_range(3..=14);
    let mut id = String::with_capacity(40);
    id.push('@');
    // A letter first, as most people's names start.
    id.push(char::from(b'a' + rng.random_range(0..26u8)));
    for _ in 1..len {
        id.push(char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]));
    }
    id.push('.');
    let mut rest = index;
    let mut suffix = Vec::new();
    loop {
        suffix.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[rest % 36]);
        rest /= 36;
        if rest == 0 {
            break;
        }
    }
    suffix.reverse();
    id.push_str(std::str::from_utf8(&suffix).expect("ASCII"));
    id.push(':');
    // Mostly one server, as on a real homeserver's listing, a few others.
    let server = match rng.random_range(0..100) {
        0..=97 => SERVERS[0],
        98 => SERVERS[1],
        _ => SERVERS[2],
    };
    id.push_str(server);
    id
}

/// Builds the registry (`Known`) and the listing (`Listed`), both sorted
/// bytewise by ID as `merge_join` requires.
fn build(universe: usize, mix: &Mix) -> (Vec<Known>, Vec<Listed>) {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut kinds = Vec::with_capacity(universe);
    for (kind, count) in [
        (Kind::Present, mix.present),
        (Kind::Missing, mix.missing),
        (Kind::Recreated, mix.recreated),
        (Kind::Deactivated, mix.deactivated),
        (Kind::New, mix.new),
    ] {
        kinds.extend(std::iter::repeat_n(kind, count));
    }
    kinds.shuffle(&mut rng);

    let mut ids: Vec<String> = (0..universe).map(|i| user_id(&mut rng, i)).collect();
    ids.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));

    // Creation times in milliseconds over the last few years.
    let base_ms: i64 = 1_600_000_000_000;
    let mut known = Vec::with_capacity(universe);
    let mut listed = Vec::with_capacity(universe);
    for (id, kind) in ids.into_iter().zip(kinds) {
        let created = base_ms + rng.random_range(0..150_000_000_000i64);
        if kind != Kind::New {
            known.push(Known {
                user_id: id.clone(),
                created_at_ms: Some(created),
                standing: AccountState::Present,
                lost_created_at: None,
                custody_since_listing: false,
            });
        }
        match kind {
            Kind::Missing => {}
            Kind::Present => {
                listed.push(Listed { user_id: id, deactivated: false, locked: false, created_at_ms: Some(created) })
            }
            Kind::Recreated => listed.push(Listed {
                user_id: id,
                deactivated: false,
                locked: false,
                created_at_ms: Some(created + rng.random_range(1_000..10_000_000_000i64)),
            }),
            Kind::Deactivated => {
                listed.push(Listed { user_id: id, deactivated: true, locked: false, created_at_ms: Some(created) })
            }
            Kind::New => {
                listed.push(Listed { user_id: id, deactivated: false, locked: false, created_at_ms: Some(created) })
            }
        }
    }
    (known, listed)
}

struct Stats {
    min: Duration,
    median: Duration,
    max: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let n = samples.len();
    let median = if n % 2 == 1 { samples[n / 2] } else { (samples[n / 2 - 1] + samples[n / 2]) / 2 };
    Stats { min: samples[0], median, max: samples[n - 1] }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Times `run` on a fresh input from `prepare` (not timed) each iteration.
fn time_with_input<T, R>(iterations: usize, mut prepare: impl FnMut() -> T, mut run: impl FnMut(T) -> R) -> Stats {
    for _ in 0..WARMUP_ITERATIONS {
        let input = prepare();
        black_box(run(black_box(input)));
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let input = prepare();
        let started = Instant::now();
        let output = run(black_box(input));
        samples.push(started.elapsed());
        // Dropping the output (freeing a million strings) is not timed.
        drop(black_box(output));
    }
    stats(samples)
}

fn sort_listing(mut listing: Vec<Listed>) -> Vec<Listed> {
    // Exactly what `check` does with the listing it collects.
    listing.sort_unstable_by(|a, b| a.user_id.as_bytes().cmp(b.user_id.as_bytes()));
    listing.dedup_by(|a, b| a.user_id == b.user_id);
    listing
}

fn check_report(report: &Report, mix: &Mix, known: usize, listed: usize) -> Result<(), String> {
    let expected = [
        ("known", known, report.known),
        ("listed", listed, report.listed),
        ("present", mix.present, report.present),
        ("missing", mix.missing, report.missing.len()),
        ("recreated", mix.recreated, report.recreated.len()),
        ("deactivated", mix.deactivated, report.deactivated.len()),
        ("new", mix.new, report.new.len()),
    ];
    let wrong: Vec<String> = expected
        .iter()
        .filter(|(_, want, got)| want != got)
        .map(|(what, want, got)| format!("{what}: expected {want}, got {got}"))
        .collect();
    if !wrong.is_empty() {
        return Err(wrong.join("; "));
    }
    let lost_share = (mix.missing + mix.recreated) as f64 / known as f64;
    let verdict = if mix.missing + mix.recreated == 0 {
        Verdict::Ok
    } else if lost_share >= LOSS_THRESHOLD {
        Verdict::SuspectedReset
    } else {
        Verdict::Loss
    };
    if report.verdict != verdict {
        return Err(format!("verdict: expected {}, got {}", verdict.as_str(), report.verdict.as_str()));
    }
    Ok(())
}

fn main() {
    let universe = env_usize("LIFEBOAT_BENCH_RECONCILE_ACCOUNTS", 1_000_000);
    let iterations = env_usize("LIFEBOAT_BENCH_ITERATIONS", 10).max(1);
    assert!(universe >= 200, "use at least 200 accounts");
    let mix = Mix::of(universe);

    println!("reconcile benchmark: lifeboat::reconcile::merge_join");
    println!(
        "machine: {} logical CPUs; {} timed iterations after {} warm-up runs",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        iterations,
        WARMUP_ITERATIONS
    );

    let started = Instant::now();
    let (known, listed) = build(universe, &mix);
    println!(
        "data: {} account IDs (seed {SEED:#x}), {} in the registry, {} in the listing; built in {}",
        universe,
        known.len(),
        listed.len(),
        ms(started.elapsed())
    );
    println!(
        "mix:  present {} (97%), missing {} (1%), recreated {} (0.5%), deactivated {} (0.5%), new {} (1%)",
        mix.present, mix.missing, mix.recreated, mix.deactivated, mix.new
    );
    println!();

    // 1. merge_join over the two sorted lists.
    let join = time_with_input(iterations, || (), |()| merge_join(&known, &listed, LOSS_THRESHOLD));
    let report = merge_join(&known, &listed, LOSS_THRESHOLD);

    // 2. The sort `check` applies to the listing it collects: once on a
    //    listing in random order (worst case), once on one already sorted
    //    (Synapse pages with order_by=name, so usually it nearly is).
    let mut shuffled = listed.clone();
    shuffled.shuffle(&mut StdRng::seed_from_u64(SEED ^ 1));
    let sort_random = time_with_input(iterations, || shuffled.clone(), sort_listing);
    let sort_sorted = time_with_input(iterations, || listed.clone(), sort_listing);
    // The sort must give back exactly the sorted listing.
    let sorted = sort_listing(shuffled.clone());
    assert!(sorted == listed, "sorting the shuffled listing did not restore it");
    drop((sorted, shuffled));

    // 3. Both together: what check does in memory after its listing.
    let shuffled = {
        let mut copy = listed.clone();
        copy.shuffle(&mut StdRng::seed_from_u64(SEED ^ 2));
        copy
    };
    let both = time_with_input(
        iterations,
        || shuffled.clone(),
        |listing| {
            let listing = sort_listing(listing);
            merge_join(&known, &listing, LOSS_THRESHOLD)
        },
    );

    let n = listed.len();
    println!("{:<46} {:>11} {:>11} {:>11} {:>12}", "measurement", "min", "median", "max", "per account");
    for (what, s) in [
        ("merge_join (registry vs listing)", &join),
        ("sort listing, random order", &sort_random),
        ("sort listing, already sorted", &sort_sorted),
        ("sort random listing + merge_join", &both),
    ] {
        println!(
            "{:<46} {:>11} {:>11} {:>11} {:>9.0} ns",
            what,
            ms(s.min),
            ms(s.median),
            ms(s.max),
            s.median.as_secs_f64() * 1e9 / n as f64
        );
    }
    println!();
    println!(
        "verdict: {} (lost share {:.2}%): present {}, missing {}, recreated {}, deactivated {}, new {}",
        report.verdict.as_str(),
        report.lost_share * 100.0,
        report.present,
        report.missing.len(),
        report.recreated.len(),
        report.deactivated.len(),
        report.new.len()
    );
    let sanity = check_report(&report, &mix, known.len(), listed.len());
    match &sanity {
        Ok(()) => println!("sanity: verdict counts match the generated mix"),
        Err(problem) => println!("sanity: MISMATCH: {problem}"),
    }
    let met = join.median < GOAL;
    println!(
        "goal: merge_join over {} accounts under {} s: {} (median {})",
        universe,
        GOAL.as_secs(),
        if met { "met" } else { "NOT MET" },
        ms(join.median)
    );
    if sanity.is_err() || !met {
        std::process::exit(1);
    }
}
