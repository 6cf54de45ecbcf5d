//! Training progress: a bar on a terminal, a plain line every `logging_steps` otherwise.

use std::io::IsTerminal;
use std::time::Instant;

/// A progress bar on a terminal, plain lines otherwise, each with the seconds since the loop
/// started (on a GPU the first steps also compile and autotune kernels: the times show it).
pub(crate) struct Progress {
    bar: Option<indicatif::ProgressBar>,
    started: Instant,
}

impl Progress {
    pub fn new(total: usize, done: usize) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {msg}",
                )
                .expect("valid template"),
            );
            bar.set_position(done as u64);
            bar
        });
        Progress {
            bar,
            started: Instant::now(),
        }
    }

    pub fn tick(&self, step: usize) {
        if let Some(bar) = &self.bar {
            bar.set_position(step as u64);
        }
    }

    pub fn log(&self, step: usize, loss: f64, lr: f64, epoch: usize, say: &dyn Fn(String)) {
        match &self.bar {
            Some(bar) => bar.set_message(format!("loss {loss:.4} lr {lr:.2e} epoch {}", epoch + 1)),
            None => say(format!(
                "step {step}: loss {loss:.4}, lr {lr:.3e}, epoch {} (at {:.1} s)",
                epoch + 1,
                self.started.elapsed().as_secs_f64()
            )),
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
