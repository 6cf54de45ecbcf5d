//! Early stopping and best-model tracking as a pure type: it sees only the metric values, so its
//! rule (Simple Transformers') is tested here on numbers, independent of any model.

use serde::{Deserialize, Serialize};

/// How a metric is judged, from the config.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StoppingRule {
    /// Lower is better (eval loss) rather than higher (exact, F1).
    pub minimize: bool,
    /// The smallest change that counts as an improvement.
    pub delta: f64,
    /// Evaluations without improvement tolerated before stopping.
    pub patience: usize,
    /// Whether training stops at all (the best model is tracked either way).
    pub stop_early: bool,
}

/// What an evaluation means for training.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A new best: the model is worth keeping.
    Improved,
    /// Not better, but within patience (or early stopping is off).
    NoImprovement,
    /// Not better, and patience is used up.
    Stop,
}

/// The best value so far and the evaluations since; carried in checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EarlyStopping {
    pub best: Option<f64>,
    pub best_step: Option<usize>,
    /// Consecutive evaluations without improvement.
    pub counter: usize,
}

impl EarlyStopping {
    /// Takes the metric `value` of the evaluation at optimizer step `step`. Simple Transformers'
    /// rule: stop at the first evaluation without improvement after `patience` of them.
    pub fn update(&mut self, rule: &StoppingRule, step: usize, value: f64) -> Verdict {
        if self.improves(rule, value) {
            self.best = Some(value);
            self.best_step = Some(step);
            self.counter = 0;
            return Verdict::Improved;
        }
        if !rule.stop_early {
            return Verdict::NoImprovement;
        }
        if self.counter < rule.patience {
            self.counter += 1;
            Verdict::NoImprovement
        } else {
            Verdict::Stop
        }
    }

    fn improves(&self, rule: &StoppingRule, value: f64) -> bool {
        match self.best {
            None => true,
            Some(best) if rule.minimize => best - value > rule.delta,
            Some(best) => value - best > rule.delta,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::{Improved, NoImprovement, Stop};

    fn rule(minimize: bool, delta: f64, patience: usize) -> StoppingRule {
        StoppingRule {
            minimize,
            delta,
            patience,
            stop_early: true,
        }
    }

    /// The verdicts for `values` at steps 1, 2, ...
    fn verdicts(rule: StoppingRule, values: &[f64]) -> (Vec<Verdict>, EarlyStopping) {
        let mut es = EarlyStopping::default();
        let v = values
            .iter()
            .enumerate()
            .map(|(i, &x)| es.update(&rule, i + 1, x))
            .collect();
        (v, es)
    }

    #[test]
    fn minimising_a_loss_keeps_the_lowest_and_stops_after_patience() {
        let (v, es) = verdicts(
            rule(true, 0.0, 2),
            &[3.0, 2.0, 2.5, 2.0, 1.9, 2.2, 2.1, 2.0],
        );
        assert_eq!(
            v,
            [
                Improved,
                Improved,
                NoImprovement,
                NoImprovement,
                Improved,
                NoImprovement,
                NoImprovement,
                Stop
            ]
        );
        assert_eq!((es.best, es.best_step), (Some(1.9), Some(5)));
    }

    #[test]
    fn maximising_a_score_keeps_the_highest() {
        let (v, es) = verdicts(rule(false, 0.0, 0), &[40.0, 55.0, 50.0]);
        assert_eq!(v, [Improved, Improved, Stop]);
        assert_eq!((es.best, es.best_step), (Some(55.0), Some(2)));
    }

    #[test]
    fn changes_within_delta_do_not_count() {
        let (v, es) = verdicts(rule(false, 1.0, 5), &[50.0, 51.0, 50.5, 52.5]);
        assert_eq!(v, [Improved, NoImprovement, NoImprovement, Improved]);
        assert_eq!(es.best, Some(52.5));
        assert_eq!(es.counter, 0);
    }

    #[test]
    fn without_early_stopping_only_the_best_is_tracked() {
        let off = StoppingRule {
            stop_early: false,
            ..rule(true, 0.0, 0)
        };
        let (v, es) = verdicts(off, &[1.0, 2.0, 3.0, 0.5]);
        assert_eq!(v, [Improved, NoImprovement, NoImprovement, Improved]);
        assert_eq!((es.best_step, es.counter), (Some(4), 0));
    }
}
