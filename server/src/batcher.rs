//! Dynamic batching: requests from concurrent handlers are gathered into one call of a batch
//! function, so the towers run once over many inputs instead of once per request.
//!
//! A dedicated worker thread takes the first waiting request, then keeps gathering until it has
//! `max_batch` of them or `max_wait` has passed since the first, calls the batch function, and
//! answers each request through its own oneshot channel. The queue in front of the worker is
//! bounded: when it is full, `submit` fails at once with [`BatchError::Overloaded`] instead of
//! letting latency grow without limit.

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::ConfigError;

/// How a batcher gathers requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most requests per batch.
    pub max_batch: usize,
    /// Longest a request waits for others to join its batch. Zero takes only what is already
    /// queued, which adds no latency to a lone request.
    pub max_wait: Duration,
    /// Requests that may wait for the worker; more are refused as overloaded.
    pub queue_capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch: 32,
            max_wait: Duration::from_millis(2),
            queue_capacity: 256,
        }
    }
}

impl BatchConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_batch == 0 {
            return Err(ConfigError {
                field: "batch.max_batch",
                reason: "must be at least 1".to_string(),
            });
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError {
                field: "batch.queue_capacity",
                reason: "must be at least 1".to_string(),
            });
        }
        Ok(())
    }
}

/// Why a batched request got no answer of its own.
#[derive(Debug)]
pub enum BatchError<E> {
    /// The queue was full; the request was not taken.
    Overloaded { batcher: String },
    /// The worker thread is gone (the server is shutting down).
    Stopped { batcher: String },
    /// The batch function failed, for this request alone or for the whole batch (shared).
    Failed(Arc<E>),
    /// The batch function panicked; the worker survives and serves the next batch.
    Panicked { batcher: String },
    /// The batch function answered the wrong number of results: a bug in it.
    WrongCount {
        batcher: String,
        expected: usize,
        got: usize,
    },
}

impl<E: fmt::Display> fmt::Display for BatchError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Overloaded { batcher } => write!(f, "{batcher} queue is full"),
            BatchError::Stopped { batcher } => write!(f, "{batcher} worker has stopped"),
            BatchError::Failed(e) => e.fmt(f),
            BatchError::Panicked { batcher } => write!(f, "{batcher} batch function panicked"),
            BatchError::WrongCount {
                batcher,
                expected,
                got,
            } => write!(
                f,
                "{batcher} batch function returned {got} results for {expected} requests"
            ),
        }
    }
}

type Reply<O, E> = oneshot::Sender<Result<O, BatchError<E>>>;

struct Job<I, O, E> {
    input: I,
    reply: Reply<O, E>,
}

/// A handle to a batching worker. Cheap to share behind an `Arc`; the worker thread exits when
/// the last handle is dropped and the queue has drained.
pub struct Batcher<I, O, E> {
    name: String,
    sender: SyncSender<Job<I, O, E>>,
    queued: Arc<AtomicUsize>,
}

impl<I, O, E> Batcher<I, O, E>
where
    I: Send + 'static,
    O: Send + 'static,
    E: Send + Sync + 'static,
{
    /// Starts the worker thread. `process` gets each batch's inputs in submission order and
    /// answers one result per input, in the same order; an outer `Err` fails the whole batch.
    pub fn spawn<F>(name: &str, config: BatchConfig, process: F) -> std::io::Result<Self>
    where
        F: FnMut(Vec<I>) -> Result<Vec<Result<O, E>>, E> + Send + 'static,
    {
        let (sender, receiver) = mpsc::sync_channel(config.queue_capacity.max(1));
        let queued = Arc::new(AtomicUsize::new(0));
        let worker = Worker {
            name: name.to_string(),
            config,
            queued: queued.clone(),
            process,
        };
        thread::Builder::new()
            .name(format!("batch-{name}"))
            .spawn(move || worker.run(receiver))?;
        Ok(Batcher {
            name: name.to_string(),
            sender,
            queued,
        })
    }

    /// Queues `input` and returns where its answer will arrive. Never blocks: a full queue is
    /// [`BatchError::Overloaded`].
    pub fn submit(
        &self,
        input: I,
    ) -> Result<oneshot::Receiver<Result<O, BatchError<E>>>, BatchError<E>> {
        let (reply, answer) = oneshot::channel();
        self.queued.fetch_add(1, Ordering::SeqCst);
        match self.sender.try_send(Job { input, reply }) {
            Ok(()) => Ok(answer),
            Err(e) => {
                self.queued.fetch_sub(1, Ordering::SeqCst);
                Err(match e {
                    TrySendError::Full(_) => BatchError::Overloaded {
                        batcher: self.name.clone(),
                    },
                    TrySendError::Disconnected(_) => BatchError::Stopped {
                        batcher: self.name.clone(),
                    },
                })
            }
        }
    }

    /// Submits `input` and waits for its answer. Dropping the future gives up the request; the
    /// worker skips it if its batch has not started yet.
    pub async fn call(&self, input: I) -> Result<O, BatchError<E>> {
        let answer = self.submit(input)?;
        match answer.await {
            Ok(result) => result,
            Err(_) => Err(BatchError::Stopped {
                batcher: self.name.clone(),
            }),
        }
    }

    /// Requests waiting for the worker (not counting the batch being processed).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::SeqCst)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

struct Worker<F> {
    name: String,
    config: BatchConfig,
    queued: Arc<AtomicUsize>,
    process: F,
}

impl<F> Worker<F> {
    fn run<I, O, E>(mut self, receiver: mpsc::Receiver<Job<I, O, E>>)
    where
        F: FnMut(Vec<I>) -> Result<Vec<Result<O, E>>, E>,
    {
        while let Ok(first) = receiver.recv() {
            let jobs = self.gather(first, &receiver);
            self.queued.fetch_sub(jobs.len(), Ordering::SeqCst);
            // Callers that timed out or disconnected no longer want an answer.
            let (inputs, replies): (Vec<I>, Vec<Reply<O, E>>) = jobs
                .into_iter()
                .filter(|job| !job.reply.is_closed())
                .map(|job| (job.input, job.reply))
                .unzip();
            if !inputs.is_empty() {
                self.answer(inputs, replies);
            }
        }
        tracing::debug!(batcher = %self.name, "batch worker stopped");
    }

    /// Takes everything already queued up to `max_batch`, then waits for more until `max_wait`
    /// after the first request.
    fn gather<J>(&self, first: J, receiver: &mpsc::Receiver<J>) -> Vec<J> {
        let deadline = Instant::now() + self.config.max_wait;
        let mut jobs = vec![first];
        while jobs.len() < self.config.max_batch {
            match receiver.try_recv() {
                Ok(job) => {
                    jobs.push(job);
                    continue;
                }
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match receiver.recv_timeout(deadline - now) {
                Ok(job) => jobs.push(job),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        jobs
    }

    fn answer<I, O, E>(&mut self, inputs: Vec<I>, replies: Vec<Reply<O, E>>)
    where
        F: FnMut(Vec<I>) -> Result<Vec<Result<O, E>>, E>,
    {
        let expected = inputs.len();
        let process = &mut self.process;
        match catch_unwind(AssertUnwindSafe(|| process(inputs))) {
            Ok(Ok(results)) if results.len() == expected => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // A caller that gave up meanwhile has dropped its receiver: nothing to do.
                    let _ = reply.send(result.map_err(|e| BatchError::Failed(Arc::new(e))));
                }
            }
            Ok(Ok(results)) => {
                tracing::error!(batcher = %self.name, expected, got = results.len(),
                    "batch function returned the wrong number of results");
                for reply in replies {
                    let _ = reply.send(Err(BatchError::WrongCount {
                        batcher: self.name.clone(),
                        expected,
                        got: results.len(),
                    }));
                }
            }
            Ok(Err(e)) => {
                let shared = Arc::new(e);
                for reply in replies {
                    let _ = reply.send(Err(BatchError::Failed(shared.clone())));
                }
            }
            Err(_) => {
                tracing::error!(batcher = %self.name, "batch function panicked");
                for reply in replies {
                    let _ = reply.send(Err(BatchError::Panicked {
                        batcher: self.name.clone(),
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::sync::Mutex;

    /// A batch function that doubles its inputs and records batch sizes. While `hold` is set it
    /// reports each batch it starts on `entered` and waits for a `release` message before
    /// answering: that lets a test know a batch is in progress without looking at a clock.
    struct Probe {
        sizes: Arc<Mutex<Vec<usize>>>,
        entered: Sender<()>,
        release: Receiver<()>,
    }

    struct Control {
        sizes: Arc<Mutex<Vec<usize>>>,
        entered: Receiver<()>,
        release: Sender<()>,
    }

    fn probe() -> (Probe, Control) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let (entered_tx, entered_rx) = channel();
        let (release_tx, release_rx) = channel();
        (
            Probe {
                sizes: sizes.clone(),
                entered: entered_tx,
                release: release_rx,
            },
            Control {
                sizes,
                entered: entered_rx,
                release: release_tx,
            },
        )
    }

    fn doubling(config: BatchConfig) -> (Batcher<i32, i32, String>, Control) {
        let (probe, control) = probe();
        let batcher = Batcher::spawn("test", config, move |inputs: Vec<i32>| {
            probe.sizes.lock().unwrap().push(inputs.len());
            probe.entered.send(()).unwrap();
            probe.release.recv().unwrap();
            if inputs.contains(&-1) {
                return Err("batch refused".to_string());
            }
            if inputs.contains(&-2) {
                panic!("batch function bug");
            }
            if inputs.contains(&-3) {
                return Ok(vec![]);
            }
            Ok(inputs
                .into_iter()
                .map(|x| {
                    if x == 13 {
                        Err(format!("{x} is unlucky"))
                    } else {
                        Ok(x * 2)
                    }
                })
                .collect())
        })
        .unwrap();
        (batcher, control)
    }

    fn config(max_batch: usize, queue_capacity: usize) -> BatchConfig {
        BatchConfig {
            max_batch,
            max_wait: Duration::ZERO,
            queue_capacity,
        }
    }

    #[test]
    fn requests_queued_during_a_batch_form_the_next_batch() {
        let (batcher, control) = doubling(config(8, 16));
        let first = batcher.submit(1).unwrap();
        control.entered.recv().unwrap(); // batch [1] is in progress, worker is busy
        let rest: Vec<_> = (2..=5).map(|x| batcher.submit(x).unwrap()).collect();
        assert_eq!(batcher.queued(), 4);
        control.release.send(()).unwrap();
        assert_eq!(first.blocking_recv().unwrap().unwrap(), 2);
        control.entered.recv().unwrap();
        control.release.send(()).unwrap();
        let answers: Vec<i32> = rest
            .into_iter()
            .map(|rx| rx.blocking_recv().unwrap().unwrap())
            .collect();
        assert_eq!(answers, vec![4, 6, 8, 10]);
        assert_eq!(*control.sizes.lock().unwrap(), vec![1, 4]);
        assert_eq!(batcher.queued(), 0);
    }

    #[test]
    fn batches_are_capped_at_max_batch() {
        let (batcher, control) = doubling(config(3, 16));
        let first = batcher.submit(0).unwrap();
        control.entered.recv().unwrap();
        let rest: Vec<_> = (1..=5).map(|x| batcher.submit(x).unwrap()).collect();
        for _ in 0..3 {
            control.release.send(()).unwrap();
        }
        first.blocking_recv().unwrap().unwrap();
        for rx in rest {
            rx.blocking_recv().unwrap().unwrap();
        }
        assert_eq!(*control.sizes.lock().unwrap(), vec![1, 3, 2]);
    }

    #[test]
    fn a_full_queue_is_refused_at_once() {
        let (batcher, control) = doubling(config(1, 2));
        let busy = batcher.submit(1).unwrap();
        control.entered.recv().unwrap();
        let queued: Vec<_> = (2..=3).map(|x| batcher.submit(x).unwrap()).collect();
        let refused = batcher.submit(4).unwrap_err();
        assert!(
            matches!(&refused, BatchError::Overloaded { batcher } if batcher == "test"),
            "{refused}"
        );
        assert_eq!(batcher.queued(), 2);
        for _ in 0..3 {
            control.release.send(()).unwrap();
        }
        assert_eq!(busy.blocking_recv().unwrap().unwrap(), 2);
        for rx in queued {
            rx.blocking_recv().unwrap().unwrap();
        }
    }

    #[test]
    fn failures_reach_the_right_callers_and_the_worker_survives() {
        let (batcher, control) = doubling(config(8, 16));
        let block = batcher.submit(0).unwrap();
        control.entered.recv().unwrap();
        let unlucky = batcher.submit(13).unwrap();
        let fine = batcher.submit(7).unwrap();
        control.release.send(()).unwrap();
        block.blocking_recv().unwrap().unwrap();
        control.entered.recv().unwrap();
        control.release.send(()).unwrap();
        match unlucky.blocking_recv().unwrap() {
            Err(BatchError::Failed(e)) => assert_eq!(*e, "13 is unlucky"),
            other => panic!("expected the item's own error, got {other:?}"),
        }
        assert_eq!(fine.blocking_recv().unwrap().unwrap(), 14);

        for (poison, check) in [
            (-1, "whole-batch error"),
            (-2, "panic"),
            (-3, "wrong count"),
        ] {
            let bad = batcher.submit(poison).unwrap();
            control.entered.recv().unwrap();
            control.release.send(()).unwrap();
            let err = bad.blocking_recv().unwrap().unwrap_err();
            let ok = match (poison, &err) {
                (-1, BatchError::Failed(e)) => **e == "batch refused",
                (-2, BatchError::Panicked { .. }) => true,
                (-3, BatchError::WrongCount { expected, got, .. }) => *expected == 1 && *got == 0,
                _ => false,
            };
            assert!(ok, "{check}: got {err}");
        }
        // Still serving after a panic.
        let after = batcher.submit(21).unwrap();
        control.entered.recv().unwrap();
        control.release.send(()).unwrap();
        assert_eq!(after.blocking_recv().unwrap().unwrap(), 42);
    }

    #[test]
    fn callers_that_gave_up_are_skipped() {
        let (batcher, control) = doubling(config(8, 16));
        let block = batcher.submit(0).unwrap();
        control.entered.recv().unwrap();
        drop(batcher.submit(1).unwrap());
        let kept = batcher.submit(2).unwrap();
        control.release.send(()).unwrap();
        block.blocking_recv().unwrap().unwrap();
        control.entered.recv().unwrap();
        control.release.send(()).unwrap();
        assert_eq!(kept.blocking_recv().unwrap().unwrap(), 4);
        assert_eq!(*control.sizes.lock().unwrap(), vec![1, 1]);
    }
}
