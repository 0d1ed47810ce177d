//! Running the pieces of a split request and combining their outcomes:
//! the pieces are first polled in order (so they are issued in order), at
//! most a window of them at once if asked, and the request's outcome is
//! the pieces' bodies or the one error that describes them all. Used by
//! [`crate::volume`] (requests longer than the target's maximum) and by
//! the NBD server's per-client read budget.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use crate::device::BlockError;

/// The outcome of a split request: all pieces' bodies, or the first error
/// that is not a withdrawal, or (pieces withdrawn, none failed otherwise) a
/// withdrawal: nothing of the request runs later.
pub(crate) fn combine<T>(results: Vec<Result<T, BlockError>>) -> Result<Vec<T>, BlockError> {
    // A piece in doubt makes the whole request in doubt, whatever else
    // failed: reporting it failed could be contradicted later.
    if let Some(e) = results.iter().find_map(|r| {
        r.as_ref()
            .err()
            .filter(|e| matches!(e, BlockError::InDoubt(_)))
    }) {
        return Err(e.clone());
    }
    let mut withdrawn = None;
    let mut bodies = Vec::with_capacity(results.len());
    for r in results {
        match r {
            Ok(b) => bodies.push(b),
            Err(e @ BlockError::Withdrawn(_)) => {
                withdrawn.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    match withdrawn {
        Some(e) => Err(e),
        None => Ok(bodies),
    }
}

/// Runs the futures to completion together, polling them in order on every
/// wake-up (so the first poll of each happens in order), and returns their
/// outputs in order. An empty set resolves at once.
pub(crate) async fn join_in_order<F: Future>(
    futures: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    join_windowed(futures, usize::MAX).await
}

/// [`join_in_order`] with at most `window` (at least 1) futures started and
/// unfinished at once: the next one is first polled when an earlier one
/// finishes, still in order.
pub(crate) async fn join_windowed<F: Future>(
    futures: impl IntoIterator<Item = F>,
    window: usize,
) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    let window = window.max(1);
    // Futures [0, started) have been polled at least once.
    let mut started = 0;
    std::future::poll_fn(|cx| loop {
        let running = outputs[..started].iter().filter(|o| o.is_none()).count();
        started = started
            .saturating_add(window.saturating_sub(running))
            .min(futures.len());
        let mut finished_one = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()).take(started) {
            if out.is_none() {
                if let Poll::Ready(v) = f.as_mut().poll(cx) {
                    *out = Some(v);
                    finished_one = true;
                }
            }
        }
        if started == futures.len() && outputs.iter().all(Option::is_some) {
            return Poll::Ready(());
        }
        // A slot freed up: start the next ones now, so they are polled.
        if !finished_one || started == futures.len() {
            return Poll::Pending;
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn join_in_order_first_polls_in_order_and_keeps_output_order() {
        let log = std::sync::Mutex::new(Vec::new());
        let outs = join_in_order((0..5).map(|i| {
            let log = &log;
            async move {
                log.lock().expect("log").push(i);
                // Later futures finish first.
                for _ in 0..(5 - i) {
                    tokio::task::yield_now().await;
                }
                i * 10
            }
        }))
        .await;
        assert_eq!(outs, vec![0, 10, 20, 30, 40]);
        assert_eq!(*log.lock().expect("log"), vec![0, 1, 2, 3, 4]);
        let none: Vec<u8> = join_in_order(Vec::<std::future::Ready<u8>>::new()).await;
        assert!(none.is_empty());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn join_windowed_keeps_at_most_the_window_running_in_order() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (running, peak) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let log = std::sync::Mutex::new(Vec::new());
        let outs = join_windowed(
            (0..10).map(|i| {
                let (running, peak, log) = (&running, &peak, &log);
                async move {
                    log.lock().expect("log").push(i);
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now, Ordering::SeqCst);
                    for _ in 0..(10 - i) {
                        tokio::task::yield_now().await;
                    }
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                }
            }),
            3,
        )
        .await;
        assert_eq!(outs, (0..10).collect::<Vec<_>>());
        assert_eq!(*log.lock().expect("log"), (0..10).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }
}
