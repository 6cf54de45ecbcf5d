//! The inference worker: one thread per model takes windows of many requests into one forward
//! pass, bounded by a window count and a token budget (padded length × windows), and sends each
//! request its logits when its last window has run.
//!
//! A batch takes queued windows in arrival order, skipping those that would pad it past
//! `max_padding`: the oldest window always goes (nothing starves), and windows of another length
//! wait for a batch of their own. Requests whose client has gone (timed out or disconnected) are
//! dropped before each batch.

use std::collections::{HashMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use qa_model::{Window, WindowLogits};
use tokio::sync::oneshot;

use super::admission::{Backlog, Work};

/// How batches are formed.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Windows per forward pass.
    pub max_windows: usize,
    /// Padded tokens per forward pass (longest window × windows); a longer window runs alone.
    pub max_tokens: usize,
    /// Padding allowed in a batch, as a fraction of its real tokens: windows much shorter or
    /// longer than the oldest wait for a batch of their own length.
    pub max_padding: f64,
    /// How long the oldest window waits for a batch to fill while the model is idle.
    pub max_delay: Duration,
}

/// A request's windows on their way to the worker.
pub struct Submission {
    pub windows: Vec<Window>,
    pub reply: oneshot::Sender<Result<Done, String>>,
    pub submitted: Instant,
}

/// What a request gets back: its logits in window order, and where its time went.
#[derive(Debug)]
pub struct Done {
    pub logits: Vec<WindowLogits>,
    /// From submission to its first window's forward pass.
    pub queue: Duration,
    /// Forward passes its windows were in.
    pub inference: Duration,
}

/// What the worker tells the metrics.
pub trait Observer {
    /// A forward pass ran: windows, padded tokens, and how long it took.
    fn batch(&self, windows: usize, tokens: usize, took: Duration);
    /// A request's first window ran after waiting this long.
    fn queued(&self, waited: Duration);
    /// Requests whose client had gone were dropped with their queued windows.
    fn abandoned(&self, requests: usize, windows: usize);
}

/// Runs until every sender of `submissions` is gone and the queue is empty.
pub fn run(
    submissions: Receiver<Submission>,
    limits: Limits,
    backlog: &Backlog,
    observer: &dyn Observer,
    mut forward: impl FnMut(&[&Window]) -> Vec<WindowLogits>,
) {
    let mut queue = Queue::default();
    loop {
        let open = gather(&submissions, &mut queue, limits);
        let (requests, dropped) = queue.drop_abandoned();
        if requests > 0 {
            backlog.remove(dropped);
            observer.abandoned(requests, dropped.windows);
        }
        if queue.pending.is_empty() {
            if open {
                continue;
            }
            return;
        }
        let batch = queue.take_batch(limits);
        let started = Instant::now();
        let rows: Vec<&Window> = batch.iter().map(|p| queue.window(p)).collect();
        let padded = rows.iter().map(|w| w.len()).max().unwrap_or(0) * rows.len();
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| forward(&rows)));
        let took = started.elapsed();
        let ran = work_of(&batch);
        backlog.remove(ran);
        match result {
            Ok(logits) => {
                backlog.measured(ran.tokens, took);
                observer.batch(batch.len(), padded, took);
                for waited in queue.deliver(&batch, logits, started, took) {
                    observer.queued(waited);
                }
            }
            Err(panic) => backlog.remove(queue.fail(&batch, &panic_message(&*panic))),
        }
    }
}

/// Waits for work when there is none, then for a batch to fill, at most `max_delay` after the
/// oldest window arrived. False once every sender is gone.
fn gather(submissions: &Receiver<Submission>, queue: &mut Queue, limits: Limits) -> bool {
    if queue.pending.is_empty() {
        match submissions.recv() {
            Ok(s) => queue.add(s),
            Err(_) => return false,
        }
    }
    loop {
        while let Ok(s) = submissions.try_recv() {
            queue.add(s);
        }
        if queue.fills_a_batch(limits) {
            return true;
        }
        let waited = queue.oldest().map_or(Duration::ZERO, |t| t.elapsed());
        let Some(left) = limits
            .max_delay
            .checked_sub(waited)
            .filter(|d| !d.is_zero())
        else {
            return true;
        };
        match submissions.recv_timeout(left) {
            Ok(s) => queue.add(s),
            Err(RecvTimeoutError::Timeout) => return true,
            Err(RecvTimeoutError::Disconnected) => return false,
        }
    }
}

fn work_of(windows: &[Pending]) -> Work {
    Work {
        windows: windows.len(),
        tokens: windows.iter().map(|p| p.len).sum(),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "the model panicked".into())
}

/// A request in the worker: its windows, the logits so far, and its reply.
struct InFlight {
    windows: Vec<Window>,
    logits: Vec<Option<WindowLogits>>,
    remaining: usize,
    reply: oneshot::Sender<Result<Done, String>>,
    submitted: Instant,
    first_run: Option<Instant>,
    inference: Duration,
}

/// One queued window: its request, its index there and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    request: u64,
    window: usize,
    len: usize,
    since: Instant,
}

#[derive(Default)]
struct Queue {
    requests: HashMap<u64, InFlight>,
    /// In arrival order.
    pending: VecDeque<Pending>,
    next_id: u64,
}

impl Queue {
    fn add(&mut self, s: Submission) {
        if s.windows.is_empty() {
            let done = Done {
                logits: Vec::new(),
                queue: Duration::ZERO,
                inference: Duration::ZERO,
            };
            let _ = s.reply.send(Ok(done));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let n = s.windows.len();
        self.pending
            .extend(s.windows.iter().enumerate().map(|(window, w)| Pending {
                request: id,
                window,
                len: w.len(),
                since: s.submitted,
            }));
        self.requests.insert(
            id,
            InFlight {
                windows: s.windows,
                logits: vec![None; n],
                remaining: n,
                reply: s.reply,
                submitted: s.submitted,
                first_run: None,
                inference: Duration::ZERO,
            },
        );
    }

    fn oldest(&self) -> Option<Instant> {
        self.pending.front().map(|p| p.since)
    }

    fn window(&self, p: &Pending) -> &Window {
        &self.requests[&p.request].windows[p.window]
    }

    /// Whether what is queued already makes a full batch (so waiting gains nothing).
    fn fills_a_batch(&self, limits: Limits) -> bool {
        let tokens: usize = self.pending.iter().map(|p| p.len).sum();
        self.pending.len() >= limits.max_windows || tokens >= limits.max_tokens
    }

    /// Drops the requests nobody waits for any more; the requests and queued work dropped.
    fn drop_abandoned(&mut self) -> (usize, Work) {
        let gone: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.reply.is_closed())
            .map(|(&id, _)| id)
            .collect();
        if gone.is_empty() {
            return (0, Work::default());
        }
        for id in &gone {
            self.requests.remove(id);
        }
        (gone.len(), self.drop_orphans())
    }

    /// Removes queued windows whose request is gone; their work.
    fn drop_orphans(&mut self) -> Work {
        let (kept, gone): (Vec<Pending>, Vec<Pending>) = self
            .pending
            .drain(..)
            .partition(|p| self.requests.contains_key(&p.request));
        self.pending = kept.into();
        work_of(&gone)
    }

    /// Windows in arrival order within the limits, skipping those that would pad the batch
    /// too much; the oldest always.
    fn take_batch(&mut self, limits: Limits) -> Vec<Pending> {
        let mut chosen = Vec::new();
        let (mut longest, mut real) = (0, 0);
        for i in 0..self.pending.len() {
            if chosen.len() == limits.max_windows.max(1) {
                break;
            }
            let len = self.pending[i].len;
            let padded = longest.max(len) * (chosen.len() + 1);
            let too_padded = padded as f64 > (real + len) as f64 * (1.0 + limits.max_padding);
            if !chosen.is_empty() && (padded > limits.max_tokens || too_padded) {
                continue;
            }
            longest = longest.max(len);
            real += len;
            chosen.push(i);
        }
        let batch: Vec<Pending> = chosen.iter().map(|&i| self.pending[i]).collect();
        for &i in chosen.iter().rev() {
            self.pending.remove(i);
        }
        batch
    }

    /// Hands each window its logits; replies to the requests now complete. Returns the queue
    /// times of the requests whose first window this was.
    fn deliver(
        &mut self,
        batch: &[Pending],
        logits: Vec<WindowLogits>,
        started: Instant,
        took: Duration,
    ) -> Vec<Duration> {
        let mut first_runs = Vec::new();
        let mut touched = Vec::new();
        for (p, l) in batch.iter().zip(logits) {
            let Some(r) = self.requests.get_mut(&p.request) else {
                continue;
            };
            if r.first_run.is_none() {
                r.first_run = Some(started);
                first_runs.push(started - r.submitted);
            }
            if !touched.contains(&p.request) {
                touched.push(p.request);
                r.inference += took;
            }
            r.logits[p.window] = Some(l);
            r.remaining -= 1;
        }
        for id in touched {
            if self.requests[&id].remaining == 0 {
                let r = self.requests.remove(&id).expect("a touched request");
                let done = Done {
                    logits: r
                        .logits
                        .into_iter()
                        .map(|l| l.expect("every window ran"))
                        .collect(),
                    queue: r.first_run.expect("it ran") - r.submitted,
                    inference: r.inference,
                };
                // The client may have gone meanwhile; nothing to do then.
                let _ = r.reply.send(Ok(done));
            }
        }
        first_runs
    }

    /// The requests of a batch whose forward pass panicked get the message; their other
    /// windows leave the queue (their work is returned).
    fn fail(&mut self, batch: &[Pending], message: &str) -> Work {
        for p in batch {
            if let Some(r) = self.requests.remove(&p.request) {
                let _ = r.reply.send(Err(message.to_string()));
            }
        }
        self.drop_orphans()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::mpsc::channel;

    use super::*;

    /// A window of `len` tokens whose ids all say `tag`.
    fn window(tag: u32, len: usize) -> Window {
        Window {
            input_ids: vec![tag; len],
            token_type_ids: vec![0; len],
        }
    }

    /// A fake model: each window's logits are its tag, repeated over its length.
    fn echo(rows: &[&Window]) -> Vec<WindowLogits> {
        rows.iter()
            .map(|w| WindowLogits {
                start: w.input_ids.iter().map(|&t| t as f32).collect(),
                end: vec![0.0; w.len()],
            })
            .collect()
    }

    #[derive(Default)]
    struct Seen {
        batches: Mutex<Vec<(usize, usize)>>,
        queued: Mutex<usize>,
        abandoned: Mutex<(usize, usize)>,
    }

    impl Observer for Seen {
        fn batch(&self, windows: usize, tokens: usize, _: Duration) {
            self.batches.lock().unwrap().push((windows, tokens));
        }
        fn queued(&self, _: Duration) {
            *self.queued.lock().unwrap() += 1;
        }
        fn abandoned(&self, requests: usize, windows: usize) {
            let mut a = self.abandoned.lock().unwrap();
            a.0 += requests;
            a.1 += windows;
        }
    }

    fn submission(windows: Vec<Window>) -> (Submission, oneshot::Receiver<Result<Done, String>>) {
        let (reply, rx) = oneshot::channel();
        let s = Submission {
            windows,
            reply,
            submitted: Instant::now(),
        };
        (s, rx)
    }

    fn work(lens: &[usize]) -> Work {
        Work {
            windows: lens.len(),
            tokens: lens.iter().sum(),
        }
    }

    fn limits(max_windows: usize, max_tokens: usize) -> Limits {
        Limits {
            max_windows,
            max_tokens,
            max_padding: 1.0,
            max_delay: Duration::from_millis(1),
        }
    }

    #[test]
    fn batches_take_windows_in_arrival_order_within_the_limits() {
        let mut queue = Queue::default();
        let lens = [100, 380, 90, 384, 120, 370, 95];
        for (i, &len) in lens.iter().enumerate() {
            queue.add(submission(vec![window(i as u32, len)]).0);
        }
        let taken =
            |q: &mut Queue, l| -> Vec<usize> { q.take_batch(l).iter().map(|p| p.len).collect() };
        let bucketed = |w, t| Limits {
            max_padding: 0.25,
            ..limits(w, t)
        };
        // Three windows at most, the long ones skipped: they would pad the short ones 4x.
        assert_eq!(taken(&mut queue, bucketed(3, 10_000)), [100, 90, 120]);
        // The oldest is now 380; a budget of 2 x 384 tokens takes one more.
        assert_eq!(taken(&mut queue, bucketed(8, 768)), [380, 384]);
        // Without a padding bound, the next in line whatever its length.
        assert_eq!(taken(&mut queue, limits(8, 10_000)), [370, 95]);
        assert!(queue.pending.is_empty());
    }

    #[test]
    fn windows_far_from_the_oldest_in_length_wait_for_their_own_batch() {
        let mut queue = Queue::default();
        for (i, len) in [200, 100, 190, 400, 210].into_iter().enumerate() {
            queue.add(submission(vec![window(i as u32, len)]).0);
        }
        let tight = Limits {
            max_padding: 0.1,
            ..limits(8, 10_000)
        };
        let taken =
            |q: &mut Queue| -> Vec<usize> { q.take_batch(tight).iter().map(|p| p.len).collect() };
        // 200, 190, 210 pad to 630 for 600 real tokens; 100 or 400 would pad far more.
        assert_eq!(taken(&mut queue), [200, 190, 210]);
        assert_eq!(taken(&mut queue), [100]);
        assert_eq!(taken(&mut queue), [400]);
    }

    #[test]
    fn every_request_gets_its_own_logits_in_window_order() {
        let (tx, rx) = channel();
        let mut replies = Vec::new();
        let backlog = Backlog::default();
        for r in 0..5u32 {
            let windows: Vec<Window> = (0..r + 1)
                .map(|w| window(r * 10 + w, 3 + w as usize))
                .collect();
            let lens: Vec<usize> = windows.iter().map(Window::len).collect();
            backlog.admit(work(&lens), 100, Duration::MAX).unwrap();
            let (s, reply) = submission(windows);
            tx.send(s).unwrap();
            replies.push(reply);
        }
        drop(tx);
        let seen = Seen::default();
        run(rx, limits(4, 64), &backlog, &seen, echo);
        for (r, reply) in replies.into_iter().enumerate() {
            let done = reply.blocking_recv().unwrap().unwrap();
            assert_eq!(done.logits.len(), r + 1);
            for (w, l) in done.logits.iter().enumerate() {
                assert_eq!(l.start, vec![(r * 10 + w) as f32; 3 + w]);
            }
        }
        let batches = seen.batches.lock().unwrap();
        assert_eq!(batches.iter().map(|b| b.0).sum::<usize>(), 15);
        assert!(
            batches.iter().all(|&(w, t)| w <= 4 && (t <= 64 || w == 1)),
            "{batches:?}"
        );
        assert_eq!(*seen.queued.lock().unwrap(), 5);
        assert_eq!(backlog.queued(), Work::default());
    }

    #[test]
    fn requests_nobody_waits_for_are_dropped_unrun() {
        let (tx, rx) = channel();
        let backlog = Backlog::default();
        backlog.admit(work(&[4, 4, 4]), 3, Duration::MAX).unwrap();
        let (gone, reply) = submission(vec![window(7, 4), window(7, 4)]);
        drop(reply);
        let (kept, kept_reply) = submission(vec![window(1, 4)]);
        tx.send(gone).unwrap();
        tx.send(kept).unwrap();
        drop(tx);
        let seen = Seen::default();
        let mut ran = Vec::new();
        run(rx, limits(8, 1000), &backlog, &seen, |rows| {
            ran.extend(rows.iter().map(|w| w.input_ids[0]));
            echo(rows)
        });
        assert_eq!(ran, [1]);
        assert_eq!(*seen.abandoned.lock().unwrap(), (1, 2));
        assert!(kept_reply.blocking_recv().unwrap().is_ok());
        assert_eq!(backlog.queued(), Work::default());
    }

    #[test]
    fn a_panicking_model_fails_its_batch_and_the_worker_goes_on() {
        let (tx, rx) = channel();
        let backlog = Backlog::default();
        let (bad, bad_reply) = submission(vec![window(666, 2)]);
        let (good, good_reply) = submission(vec![window(1, 2)]);
        backlog.admit(work(&[2, 2]), 2, Duration::MAX).unwrap();
        tx.send(bad).unwrap();
        tx.send(good).unwrap();
        drop(tx);
        let seen = Seen::default();
        // One window per batch, so the panic hits the first request only.
        run(rx, limits(1, 1000), &backlog, &seen, |rows| {
            assert!(rows[0].input_ids[0] != 666, "boom");
            echo(rows)
        });
        let err = bad_reply.blocking_recv().unwrap().unwrap_err();
        assert!(err.contains("boom"), "{err}");
        assert!(good_reply.blocking_recv().unwrap().is_ok());
        assert_eq!(backlog.queued(), Work::default());
    }

    #[test]
    fn an_idle_worker_waits_for_a_batch_to_fill_but_not_past_the_delay() {
        let (tx, rx) = channel();
        let backlog = Backlog::default();
        backlog.admit(work(&[5, 5, 5]), 3, Duration::MAX).unwrap();
        let seen = Seen::default();
        let mut replies = Vec::new();
        std::thread::scope(|scope| {
            let worker = scope.spawn(|| {
                let limits = Limits {
                    max_delay: Duration::from_millis(300),
                    ..limits(2, 1000)
                };
                run(rx, limits, &backlog, &seen, echo)
            });
            for tag in 0..3 {
                let (s, reply) = submission(vec![window(tag, 5)]);
                tx.send(s).unwrap();
                replies.push(reply);
            }
            // The third is answered while the channel is still open: after the delay.
            let third = replies.pop().unwrap();
            assert!(third.blocking_recv().unwrap().is_ok());
            drop(tx);
            worker.join().unwrap();
        });
        // Two filled the first batch at once; the third ran alone.
        assert_eq!(*seen.batches.lock().unwrap(), [(2, 10), (1, 5)]);
        for reply in replies {
            assert!(reply.blocking_recv().unwrap().is_ok());
        }
    }
}
