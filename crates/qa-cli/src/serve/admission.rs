//! Admission by the work already queued: at most so many windows, and no more than the request
//! timeout's worth of model time at the speed the model has shown. A request the queue could not
//! answer in time is refused at once (429) instead of timing out after waiting.

use std::sync::Mutex;
use std::time::Duration;

/// Windows and their (unpadded) tokens.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    pub windows: usize,
    pub tokens: usize,
}

impl Work {
    pub fn add(&mut self, other: Work) {
        self.windows += other.windows;
        self.tokens += other.tokens;
    }
}

/// Why a request was not admitted.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    Windows { queued: usize, max: usize },
    Time { seconds: f64, limit: Duration },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Windows { queued, max } => write!(
                f,
                "{queued} windows are waiting for the model and the limit is {max}; retry shortly"
            ),
            Refusal::Time { seconds, limit } => write!(
                f,
                "the model has about {seconds:.1} s of work queued with this request, more than \
                 the {limit:.1?} left of --request-timeout; retry shortly"
            ),
        }
    }
}

/// Work submitted and not yet run or dropped, and the model's measured speed.
#[derive(Debug, Default)]
pub struct Backlog {
    queued: Mutex<Work>,
    /// Tokens per second, a moving average over forward passes; None before the first.
    rate: Mutex<Option<f64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Backlog {
    /// Queues `work` unless the windows would pass `max_windows` or, with work already queued,
    /// the model would need more than `limit` (the request's time left) to reach its end.
    pub fn admit(&self, work: Work, max_windows: usize, limit: Duration) -> Result<(), Refusal> {
        let mut queued = lock(&self.queued);
        if queued.windows + work.windows > max_windows {
            return Err(Refusal::Windows {
                queued: queued.windows,
                max: max_windows,
            });
        }
        if let (true, Some(rate)) = (queued.windows > 0, *lock(&self.rate)) {
            let seconds = (queued.tokens + work.tokens) as f64 / rate;
            if seconds > limit.as_secs_f64() {
                return Err(Refusal::Time { seconds, limit });
            }
        }
        queued.add(work);
        Ok(())
    }

    /// Work that ran or was dropped. Removing more than was admitted is a bug, caught in tests.
    pub fn remove(&self, work: Work) {
        let mut queued = lock(&self.queued);
        debug_assert!(queued.windows >= work.windows && queued.tokens >= work.tokens);
        queued.windows = queued.windows.saturating_sub(work.windows);
        queued.tokens = queued.tokens.saturating_sub(work.tokens);
    }

    pub fn queued(&self) -> Work {
        *lock(&self.queued)
    }

    /// A forward pass ran `tokens` real tokens in `took`.
    pub fn measured(&self, tokens: usize, took: Duration) {
        let now = tokens as f64 / took.as_secs_f64().max(1e-6);
        let mut rate = lock(&self.rate);
        *rate = Some(rate.map_or(now, |r| 0.7 * r + 0.3 * now));
    }

    pub fn tokens_per_second(&self) -> Option<f64> {
        *lock(&self.rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Work = Work {
        windows: 1,
        tokens: 100,
    };

    #[test]
    fn the_window_bound_holds() {
        let backlog = Backlog::default();
        let limit = Duration::from_secs(1);
        assert!(backlog.admit(WINDOW, 2, limit).is_ok());
        assert!(backlog.admit(WINDOW, 2, limit).is_ok());
        let refused = backlog.admit(WINDOW, 2, limit).unwrap_err();
        assert_eq!(refused, Refusal::Windows { queued: 2, max: 2 });
        backlog.remove(WINDOW);
        assert!(backlog.admit(WINDOW, 2, limit).is_ok());
        assert_eq!(
            backlog.queued(),
            Work {
                windows: 2,
                tokens: 200
            }
        );
    }

    #[test]
    fn work_past_the_time_limit_is_refused_unless_the_queue_is_empty() {
        let backlog = Backlog::default();
        backlog.measured(1000, Duration::from_secs(1));
        let limit = Duration::from_secs(1);
        let big = Work {
            windows: 3,
            tokens: 3000,
        };
        // Alone it would take 3 s, but nothing else waits: it may try.
        assert!(backlog.admit(big, 100, limit).is_ok());
        let refused = backlog.admit(WINDOW, 100, limit).unwrap_err();
        assert!(matches!(refused, Refusal::Time { seconds, .. } if (seconds - 3.1).abs() < 1e-9));
        assert!(refused.to_string().contains("3.1 s of work"), "{refused}");
        backlog.remove(big);
        assert!(backlog.admit(WINDOW, 100, limit).is_ok());
        assert!(backlog.admit(WINDOW, 100, limit).is_ok(), "0.2 s of work");
    }

    #[test]
    fn the_rate_is_a_moving_average() {
        let backlog = Backlog::default();
        assert_eq!(backlog.tokens_per_second(), None);
        backlog.measured(1000, Duration::from_secs(1));
        backlog.measured(2000, Duration::from_secs(1));
        assert!((backlog.tokens_per_second().unwrap() - 1300.0).abs() < 1e-9);
    }
}
