//! The shutdown after the command exits, as a pure transition: from where
//! it stands, what reaping found and the time, the next step. No
//! processes, no clock of its own: unit-tested without either.

use std::time::{Duration, Instant};

use crate::exit_code::ExitCode;

/// After SIGKILL, how long to wait for the last processes to be reaped. A
/// process in uninterruptible sleep (a hung SMB share) can outlive SIGKILL
/// indefinitely; sharelink must not hang with it, so it gives up and exits
/// (as PID 1, the kernel then tears the namespace down).
pub(crate) const KILL_WAIT: Duration = Duration::from_secs(2);

/// Where the shutdown stands. The command's status is fixed once it is
/// reaped; what follows only decides when to exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The command runs: forward signals, reap orphans.
    Running,
    /// The command exited with `code`; the processes left got SIGTERM and
    /// have until `deadline`.
    Draining { code: ExitCode, deadline: Instant },
    /// The grace period is over and SIGKILL was sent; wait until `deadline`
    /// for the last ones to be reaped.
    Killing { code: ExitCode, deadline: Instant },
}

impl Phase {
    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Running => None,
            Phase::Draining { deadline, .. } | Phase::Killing { deadline, .. } => Some(deadline),
        }
    }
}

/// The next move of the shutdown, decided by [`step`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Nothing to do but wait for the next signal or the deadline.
    Wait,
    /// The command exited with `code` and processes are left: SIGTERM (and
    /// SIGCONT) to them, and a grace period until `deadline`.
    Terminate { code: ExitCode, deadline: Instant },
    /// The grace period is over: SIGKILL to whatever is left, and wait until
    /// `deadline` for it to be reaped.
    Kill { code: ExitCode, deadline: Instant },
    /// Still waiting after SIGKILL: send it again, so a process forked
    /// between the scan and the kill does not escape.
    KillAgain,
    /// Exit with `code`; `abandoned` when processes survived SIGKILL.
    Exit { code: ExitCode, abandoned: bool },
}

/// The shutdown as a pure function: from the phase, what reaping found and
/// the time, the next step. No processes, no clock of its own.
pub(crate) fn step(
    phase: Phase,
    command: Option<ExitCode>,
    children_left: bool,
    now: Instant,
    grace: Duration,
) -> Step {
    match phase {
        Phase::Running => match command {
            None => Step::Wait,
            Some(code) if !children_left => Step::Exit {
                code,
                abandoned: false,
            },
            Some(code) => Step::Terminate {
                code,
                deadline: now + grace,
            },
        },
        Phase::Draining { code, .. } | Phase::Killing { code, .. } if !children_left => {
            Step::Exit {
                code,
                abandoned: false,
            }
        }
        Phase::Draining { code, deadline } if now >= deadline => Step::Kill {
            code,
            deadline: now + KILL_WAIT,
        },
        Phase::Draining { .. } => Step::Wait,
        Phase::Killing { code, deadline } if now >= deadline => Step::Exit {
            code,
            abandoned: true,
        },
        Phase::Killing { .. } => Step::KillAgain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_while_the_command_runs() {
        let t = Instant::now();
        let g = Duration::from_secs(3);
        assert_eq!(step(Phase::Running, None, true, t, g), Step::Wait);
        // No child at all yet is still "running" until the command's
        // status is known.
        assert_eq!(step(Phase::Running, None, false, t, g), Step::Wait);
        assert_eq!(
            step(Phase::Running, Some(ExitCode::Command(3)), false, t, g),
            Step::Exit {
                code: ExitCode::Command(3),
                abandoned: false
            }
        );
        assert_eq!(
            step(Phase::Running, Some(ExitCode::Command(3)), true, t, g),
            Step::Terminate {
                code: ExitCode::Command(3),
                deadline: t + g
            }
        );
    }

    #[test]
    fn step_through_the_shutdown() {
        let t = Instant::now();
        let g = Duration::from_secs(3);
        let draining = Phase::Draining {
            code: ExitCode::Command(7),
            deadline: t + g,
        };
        assert_eq!(step(draining, None, true, t, g), Step::Wait);
        assert_eq!(
            step(draining, None, false, t, g),
            Step::Exit {
                code: ExitCode::Command(7),
                abandoned: false
            }
        );
        assert_eq!(
            step(draining, None, true, t + g, g),
            Step::Kill {
                code: ExitCode::Command(7),
                deadline: t + g + KILL_WAIT
            }
        );
        let killing = Phase::Killing {
            code: ExitCode::Command(7),
            deadline: t + g + KILL_WAIT,
        };
        assert_eq!(step(killing, None, true, t + g, g), Step::KillAgain);
        assert_eq!(
            step(killing, None, false, t + g, g),
            Step::Exit {
                code: ExitCode::Command(7),
                abandoned: false
            }
        );
        assert_eq!(
            step(killing, None, true, t + g + KILL_WAIT, g),
            Step::Exit {
                code: ExitCode::Command(7),
                abandoned: true
            }
        );
        // A zero grace period kills on the next turn.
        let zero = Duration::ZERO;
        match step(Phase::Running, Some(ExitCode::Command(0)), true, t, zero) {
            Step::Terminate { code, deadline } => assert_eq!(
                step(Phase::Draining { code, deadline }, None, true, t, zero),
                Step::Kill {
                    code: ExitCode::Command(0),
                    deadline: t + KILL_WAIT
                }
            ),
            other => panic!("{other:?}"),
        }
    }
}
