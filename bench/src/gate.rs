//! The drop rules, fixed before any measurement: a run is dropped (and reported as dropped) when
//! the machine or the load generator could not give it a fair chance. A per-round difference is
//! only formed when both the path's run and the direct run of that round were kept.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Limits {
    /// Hypervisor steal over all CPUs, percent of the window.
    pub max_steal_pct: f64,
    /// Other processes' task time on the CPU under test, and on the load generator's CPU,
    /// percent of the window (each CPU on its own).
    pub max_foreign_pct: f64,
    /// Achieved rate as a fraction of the target (open-loop runs and event streams).
    pub min_rate_ratio: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_steal_pct: 2.0,
            max_foreign_pct: 10.0,
            min_rate_ratio: 0.99,
        }
    }
}

/// What the gate looks at, for one run.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Facts {
    pub steal_pct: f64,
    /// Other processes on the CPU under test.
    pub foreign_pct: f64,
    /// Other processes on the load generator's CPU (a delayed load generator inflates the
    /// latency it records as much as a delayed proxy does).
    pub loadgen_foreign_pct: f64,
    /// `None` for closed-loop runs, which have no target.
    pub target_rate: Option<f64>,
    pub achieved_rate: f64,
    /// Transport errors and non-2xx answers (or broken event streams).
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "rule", rename_all = "snake_case")]
pub enum DropReason {
    Steal { pct: f64 },
    Foreign { pct: f64 },
    LoadgenForeign { pct: f64 },
    MissedRate { achieved: f64, target: f64 },
    Errors { count: u64 },
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Steal { pct } => write!(f, "steal {pct:.1}%"),
            Self::Foreign { pct } => write!(f, "other load {pct:.1}% on the CPU under test"),
            Self::LoadgenForeign { pct } => {
                write!(f, "other load {pct:.1}% on the load generator's CPU")
            }
            Self::MissedRate { achieved, target } => {
                write!(f, "missed the rate ({achieved:.0} of {target:.0}/s)")
            }
            Self::Errors { count } => write!(f, "{count} errors"),
        }
    }
}

/// Every rule the run breaks; empty when it is kept.
pub fn judge(facts: &Facts, limits: &Limits) -> Vec<DropReason> {
    let mut out = Vec::new();
    if facts.steal_pct > limits.max_steal_pct {
        out.push(DropReason::Steal {
            pct: facts.steal_pct,
        });
    }
    if facts.foreign_pct > limits.max_foreign_pct {
        out.push(DropReason::Foreign {
            pct: facts.foreign_pct,
        });
    }
    if facts.loadgen_foreign_pct > limits.max_foreign_pct {
        out.push(DropReason::LoadgenForeign {
            pct: facts.loadgen_foreign_pct,
        });
    }
    if let Some(target) = facts.target_rate
        && facts.achieved_rate < target * limits.min_rate_ratio
    {
        out.push(DropReason::MissedRate {
            achieved: facts.achieved_rate,
            target,
        });
    }
    if facts.errors > 0 {
        out.push(DropReason::Errors {
            count: facts.errors,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Facts {
        Facts {
            steal_pct: 0.5,
            foreign_pct: 3.0,
            loadgen_foreign_pct: 4.0,
            target_rate: Some(1000.0),
            achieved_rate: 1000.2,
            errors: 0,
        }
    }

    #[test]
    fn a_clean_run_is_kept() {
        assert!(judge(&ok(), &Limits::default()).is_empty());
    }

    #[test]
    fn limits_are_inclusive() {
        let l = Limits::default();
        let f = Facts {
            steal_pct: 2.0,
            foreign_pct: 10.0,
            loadgen_foreign_pct: 10.0,
            achieved_rate: 990.0,
            ..ok()
        };
        assert!(judge(&f, &l).is_empty());
    }

    #[test]
    fn each_rule_drops_and_says_why() {
        let l = Limits::default();
        let steal = judge(
            &Facts {
                steal_pct: 2.5,
                ..ok()
            },
            &l,
        );
        assert_eq!(steal, vec![DropReason::Steal { pct: 2.5 }]);
        let missed = judge(
            &Facts {
                achieved_rate: 989.9,
                ..ok()
            },
            &l,
        );
        assert_eq!(
            missed,
            vec![DropReason::MissedRate {
                achieved: 989.9,
                target: 1000.0
            }]
        );
        assert_eq!(missed[0].to_string(), "missed the rate (990 of 1000/s)");
        let busy_loadgen = judge(
            &Facts {
                loadgen_foreign_pct: 12.0,
                ..ok()
            },
            &l,
        );
        assert_eq!(busy_loadgen, vec![DropReason::LoadgenForeign { pct: 12.0 }]);
        let all = judge(
            &Facts {
                steal_pct: 9.0,
                foreign_pct: 40.0,
                loadgen_foreign_pct: 30.0,
                target_rate: Some(5000.0),
                achieved_rate: 3000.0,
                errors: 3,
            },
            &l,
        );
        assert_eq!(all.len(), 5);
    }

    #[test]
    fn closed_loop_runs_have_no_rate_to_miss() {
        let f = Facts {
            target_rate: None,
            achieved_rate: 12.0,
            ..ok()
        };
        assert!(judge(&f, &Limits::default()).is_empty());
    }
}
