//! Pacing: how lifeboat keeps its reads of a big server to a share of
//! Synapse's time (`watch.max_synapse_share`). After each call, or group of
//! calls, it rests in proportion to how long Synapse was busy with it.

use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long to wait after a call that took `took`, so that lifeboat takes
/// at most `share` of Synapse's time.
fn pause_after(took: Duration, share: f64) -> Duration {
    if !(share > 0.0 && share < 1.0) {
        return Duration::ZERO;
    }
    took.mul_f64((1.0 - share) / share)
}

/// The load bound, after every paced call or group of calls to Synapse
/// (listing pages, detail reads): Synapse was busy for lifeboat since
/// `asked`, so rest [`pause_after`] that. False when `stop` cut it short.
pub async fn rest_after(asked: Instant, pace: Option<f64>, stop: &CancellationToken) -> bool {
    if let Some(share) = pace {
        stop.run_until_cancelled(tokio::time::sleep(pause_after(asked.elapsed(), share))).await;
    }
    !stop.is_cancelled()
}

/// Calls Synapse for each of `items`, at most `concurrency` at once: the
/// outcomes, as they come. Paced, the calls go in groups of `concurrency`,
/// each followed by its rest ([`rest_after`]) once its last outcome was
/// handled: resting between groups, never while calls are in flight, keeps
/// bursts short, so nobody's requests queue behind hundreds of lifeboat's. A
/// group's wall time counts as Synapse's (its main process serves requests
/// on one Python thread, so calls sent together mostly wait for each other;
/// lifeboat's own work in it errs on Synapse's side). On `stop` the outcomes
/// end between two, dropping calls in flight (a sync makes them again).
pub fn call_in_paced_groups<'a, T, R, F, Fut>(
    items: Vec<T>,
    concurrency: usize,
    pace: Option<f64>,
    stop: &'a CancellationToken,
    call: F,
) -> impl futures::Stream<Item = R> + 'a
where
    T: 'a,
    R: 'a,
    F: FnMut(T) -> Fut + 'a,
    Fut: Future<Output = R> + 'a,
{
    let concurrency = concurrency.max(1);
    let group_size = if pace.is_some() { concurrency } else { items.len().max(1) };
    let mut call = call;
    futures::stream::iter(items)
        .chunks(group_size)
        .map(move |group| {
            let asked = Instant::now();
            let calls: Vec<Fut> = group.into_iter().map(&mut call).collect();
            let rest = futures::stream::once(rest_after(asked, pace, stop)).filter_map(|_| std::future::ready(None));
            futures::stream::iter(calls).buffer_unordered(concurrency).chain(rest)
        })
        .flatten()
        .take_until(stop.cancelled())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paced_listing_waits_so_that_synapse_spends_at_most_its_share_on_it() {
        let took = Duration::from_millis(100);
        assert_eq!(pause_after(took, 0.25), Duration::from_millis(300), "100 ms of 400 is a quarter");
        assert_eq!(pause_after(took, 0.5), Duration::from_millis(100));
        assert_eq!(pause_after(took, 1.0), Duration::ZERO, "all of its time: no pause");
    }

    /// One call of a test: its item, when it started and when it ended.
    type Call = (usize, std::time::Instant, std::time::Instant);

    async fn ten_calls_of_10_ms(
        pace: Option<f64>,
        stop: &CancellationToken,
        stop_after_recording: usize,
    ) -> (Vec<usize>, Vec<Call>) {
        let calls = std::sync::Mutex::new(Vec::<Call>::new());
        let mut recorded = Vec::new();
        {
            let outcomes = call_in_paced_groups((0..10).collect(), 4, pace, stop, |item: usize| {
                let calls = &calls;
                async move {
                    let started = std::time::Instant::now();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    calls.lock().unwrap().push((item, started, std::time::Instant::now()));
                    item
                }
            });
            let mut outcomes = std::pin::pin!(outcomes);
            while let Some(item) = outcomes.next().await {
                recorded.push(item);
                if recorded.len() == stop_after_recording {
                    stop.cancel();
                }
            }
        }
        recorded.sort_unstable();
        (recorded, calls.into_inner().unwrap())
    }

    /// The first start and the last end of each group of four calls.
    fn group_spans(calls: &[Call]) -> Vec<(std::time::Instant, std::time::Instant)> {
        let mut spans = Vec::new();
        for group in 0..calls.len().div_ceil(4) {
            let members: Vec<_> = calls.iter().filter(|(item, _, _)| item / 4 == group).collect();
            let first_start = members.iter().map(|(_, started, _)| *started).min().unwrap();
            let last_end = members.iter().map(|(_, _, ended)| *ended).max().unwrap();
            spans.push((first_start, last_end));
        }
        spans
    }

    // Lower bounds only: a busy machine makes every wait longer, never shorter.
    #[tokio::test]
    async fn paced_detail_calls_go_in_groups_each_followed_by_a_rest_of_three_times_its_length_at_a_quarter() {
        let (recorded, calls) = ten_calls_of_10_ms(Some(0.25), &CancellationToken::new(), 0).await;
        assert_eq!(recorded, (0..10).collect::<Vec<_>>(), "every outcome recorded once");
        let spans = group_spans(&calls);
        assert_eq!(spans.len(), 3, "groups of 4, 4 and 2");
        for (number, pair) in spans.windows(2).enumerate() {
            let ((started, ended), (next_started, _)) = (pair[0], pair[1]);
            let (busy, rest) = (ended - started, next_started.saturating_duration_since(ended));
            // (1 µs: the float arithmetic of `pause_after`.)
            assert!(
                rest + Duration::from_micros(1) >= busy * 3,
                "group {number} kept Synapse busy {busy:?}, then rested only {rest:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_stop_ends_paced_calls_at_once_and_keeps_what_was_recorded() {
        let stop = CancellationToken::new();
        let (recorded, calls) = ten_calls_of_10_ms(Some(0.25), &stop, 1).await;
        assert_eq!(recorded.len(), 1, "nothing recorded after the stop");
        assert!(calls.iter().all(|(item, _, _)| *item < 4), "no call of the next group started: {calls:?}");

        let stop = CancellationToken::new();
        let (recorded, calls) = ten_calls_of_10_ms(Some(0.25), &stop, 4).await;
        assert_eq!(recorded, [0, 1, 2, 3], "the whole first group");
        assert!(calls.iter().all(|(item, _, _)| *item < 4), "{calls:?}");
    }

    #[tokio::test]
    async fn a_stop_cuts_a_rest_short() {
        let stop = CancellationToken::new();
        stop.cancel();
        // An hour's work would rest three hours.
        let an_hour_ago = Instant::now().checked_sub(Duration::from_secs(3600)).unwrap();
        let rested = tokio::time::timeout(Duration::from_secs(30), rest_after(an_hour_ago, Some(0.25), &stop)).await;
        assert_eq!(rested.ok(), Some(false), "stopped at once, and says so");
    }
}
