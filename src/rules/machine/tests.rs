//! The machine's rules, driven in virtual time.

use super::*;
use crate::error::Stage;
use crate::testing::{ms, secs};

/// Always draws the largest delay allowed, so waits are exact.
struct Longest;

impl Random for Longest {
    fn below(&mut self, max: Duration) -> Duration {
        max
    }
}

fn settings() -> Settings {
    Settings {
        once: false,
        max_retries: 0,
        heartbeat_off: false,
        watchdog: None,
        refresh: None,
    }
}

/// A machine and a virtual clock; the driver's part is played by the test.
struct Run {
    machine: Machine,
    now: Instant,
}

impl Run {
    fn new(settings: Settings) -> Run {
        Run {
            machine: Machine::new(
                settings,
                Backoff::new(secs(1), secs(60)),
                Box::new(Longest),
                "ws://test/".into(),
            ),
            now: Instant::now(),
        }
    }

    fn start(&mut self) -> Vec<Action> {
        let now = self.now;
        self.machine.start(now)
    }

    fn input(&mut self, input: Input) -> Vec<Action> {
        let now = self.now;
        self.machine.handle(input, now)
    }

    /// Jumps the clock to the next deadline and fires it.
    fn next(&mut self) -> (Duration, Vec<Action>) {
        let at = self.machine.next_deadline().expect("a deadline");
        let waited = at.saturating_duration_since(self.now);
        self.now = self.now.max(at);
        let now = self.now;
        (waited, self.machine.on_time(now))
    }

    fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        let now = self.now;
        self.machine.on_time(now)
    }

    fn dialed(actions: &[Action]) -> ConnId {
        actions
            .iter()
            .find_map(|a| match a {
                Action::StartAttempt { conn } => Some(*conn),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no StartAttempt in {actions:?}"))
    }

    /// Dials, connects, and returns the live connection's id.
    fn connect(&mut self, conn: ConnId) {
        let deadline = self.now + secs(10);
        self.input(Input::AttemptStarted { conn, deadline });
        let actions = self.input(Input::Connected { conn });
        assert!(actions.contains(&Action::Activate { conn }), "{actions:?}");
    }

    fn refuse(&mut self, conn: ConnId) -> Vec<Action> {
        self.input(Input::ConnectFailed {
            conn,
            error: ConnectError::Tcp(std::io::ErrorKind::ConnectionRefused.into()),
        })
    }

    /// Starts the run and loses `times` connections in a row (each connected, then
    /// dead); returns the attempt dialled after the last loss.
    fn start_and_lose(&mut self, times: usize) -> ConnId {
        let mut conn = Self::dialed(&self.start());
        for _ in 0..times {
            self.connect(conn);
            self.lose(conn);
            conn = self.machine.next_conn;
        }
        conn
    }

    /// The connection dies; the teardown ends at once. Returns the next delay.
    fn lose(&mut self, conn: ConnId) -> Duration {
        let actions = self.input(Input::Dead {
            conn,
            reason: "gone".into(),
            idle: None,
        });
        assert!(actions.contains(&Action::Teardown { graceful: false }));
        self.input(Input::TornDown);
        let (waited, actions) = self.next();
        Self::dialed(&actions);
        waited
    }
}

fn exit_of(actions: &[Action]) -> Option<&Ending> {
    actions.iter().find_map(|a| match a {
        Action::Exit(ending) => Some(ending),
        _ => None,
    })
}

#[test]
fn backoff_doubles_and_resets_once_a_heartbeat_is_answered() {
    let mut run = Run::new(settings());
    let mut conn = Run::dialed(&run.start());
    let mut delays = Vec::new();
    for _ in 0..4 {
        run.connect(conn);
        delays.push(run.lose(conn));
        conn = run.machine.next_conn;
    }
    assert_eq!(delays, [secs(1), secs(2), secs(4), secs(8)]);
    // A connection that proves alive resets the counter.
    run.connect(conn);
    run.input(Input::Proven {
        conn,
        rtt: Some(ms(3)),
    });
    assert_eq!(run.lose(conn), secs(1));
}

#[test]
fn with_the_heartbeat_off_ten_quiet_seconds_are_the_proof() {
    let mut run = Run::new(Settings {
        heartbeat_off: true,
        ..settings()
    });
    let mut conn = run.start_and_lose(3);
    // 9.9 s up is not enough: the next delay keeps growing.
    run.connect(conn);
    run.advance(ms(9_900));
    assert_eq!(run.lose(conn), secs(8));
    conn = run.machine.next_conn;
    run.connect(conn);
    let (waited, _) = run.next();
    assert_eq!(waited, QUIET_PROOF);
    assert_eq!(run.lose(conn), secs(1));
}

#[test]
fn the_delay_counts_from_the_end_of_the_teardown() {
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    run.connect(conn);
    run.input(Input::Dead {
        conn,
        reason: "gone".into(),
        idle: None,
    });
    assert_eq!(
        run.machine.next_deadline(),
        None,
        "no timer before the teardown ends"
    );
    run.now += secs(5); // a slow teardown
    let torn_down_at = run.now;
    run.input(Input::TornDown);
    assert_eq!(run.machine.next_deadline(), Some(torn_down_at + secs(1)));
}

#[test]
fn max_retries_counts_failures_in_a_row_and_an_upgrade_breaks_the_row() {
    let mut run = Run::new(Settings {
        max_retries: 3,
        ..settings()
    });
    let conn = Run::dialed(&run.start());
    run.refuse(conn);
    let (_, actions) = run.next();
    let conn = Run::dialed(&actions);
    run.refuse(conn);
    // Third attempt upgrades, then dies before proving anything.
    let (_, actions) = run.next();
    let conn = Run::dialed(&actions);
    run.connect(conn);
    run.lose(conn);
    let conn = run.machine.next_conn;
    run.refuse(conn);
    let (_, actions) = run.next();
    let conn = Run::dialed(&actions);
    run.refuse(conn);
    let (_, actions) = run.next();
    let conn = Run::dialed(&actions);
    let actions = run.refuse(conn);
    match exit_of(&actions) {
        Some(Ending::GaveUp(reason)) => {
            assert!(reason.contains("3 failed attempts"), "{reason}")
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert_eq!(run.machine.state(), State::Stopped);
    assert!(run.machine.last_error().unwrap().contains("giving up"));
}

#[test]
fn unauthorized_waits_between_half_and_all_of_backoff_max() {
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    run.input(Input::ConnectFailed {
        conn,
        error: ConnectError::Rejected {
            status: 401,
            retry_after: None,
        },
    });
    assert_eq!(run.next().0, secs(60));
    // And with the smallest draw, half of it.
    let mut run = Run::new(settings());
    run.machine
        .set_random(Box::new(crate::rules::backoff::SplitMix64::new(0)));
    struct Smallest;
    impl Random for Smallest {
        fn below(&mut self, _: Duration) -> Duration {
            Duration::ZERO
        }
    }
    run.machine.set_random(Box::new(Smallest));
    let conn = Run::dialed(&run.start());
    run.input(Input::ConnectFailed {
        conn,
        error: ConnectError::Rejected {
            status: 403,
            retry_after: None,
        },
    });
    assert_eq!(run.next().0, secs(30));
}

#[test]
fn a_proxy_refusing_credentials_waits_like_401() {
    struct Smallest;
    impl Random for Smallest {
        fn below(&mut self, _: Duration) -> Duration {
            Duration::ZERO
        }
    }
    for (status, unauthorized) in [(407, true), (401, true), (403, true), (502, false)] {
        let mut run = Run::new(settings());
        run.machine.set_random(Box::new(Smallest));
        let conn = Run::dialed(&run.start());
        run.input(Input::ConnectFailed {
            conn,
            error: ConnectError::Proxy {
                proxy: "http://proxy:3128".into(),
                status: Some(status),
                detail: format!("HTTP/1.1 {status} No"),
            },
        });
        let expected = if unauthorized {
            secs(30)
        } else {
            Duration::ZERO
        };
        assert_eq!(run.next().0, expected, "proxy answered {status}");
    }
}

#[test]
fn retry_after_waits_that_long_plus_up_to_ten_percent() {
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    run.input(Input::ConnectFailed {
        conn,
        error: ConnectError::Rejected {
            status: 503,
            retry_after: Some(secs(120)),
        },
    });
    assert_eq!(run.next().0, secs(132));
}

/// Draws these durations in turn (each capped at the `max` asked for), then `max`.
struct Draws(std::collections::VecDeque<Duration>);

impl Random for Draws {
    fn below(&mut self, max: Duration) -> Duration {
        self.0.pop_front().map_or(max, |draw| draw.min(max))
    }
}

/// After refused attempts with waits of 1, 2 and 4 s, the client waits 8 s.
fn waiting_eight_seconds() -> Run {
    let mut run = Run::new(settings());
    let mut conn = Run::dialed(&run.start());
    for expected in [1, 2, 4] {
        run.refuse(conn);
        let (waited, actions) = run.next();
        assert_eq!(waited, secs(expected));
        conn = Run::dialed(&actions);
    }
    run.refuse(conn);
    run
}

#[test]
fn a_network_change_cuts_a_plain_wait_once() {
    let mut run = waiting_eight_seconds();
    let draws = [ms(600), ms(10), ms(10), ms(10)];
    run.machine.set_random(Box::new(Draws(draws.into())));
    run.advance(secs(1));
    assert!(run.input(Input::NetworkChanged).is_empty());
    // Cut to the draw from [0, backoff-initial].
    assert_eq!(run.machine.next_deadline(), Some(run.now + ms(600)));
    // A flapping interface: more events, each would draw shorter, none counts.
    for _ in 0..3 {
        run.advance(ms(100));
        run.input(Input::NetworkChanged);
    }
    let (waited, actions) = run.next();
    assert_eq!(
        waited,
        ms(300),
        "one cut only: 600 ms after the first event"
    );
    let conn = Run::dialed(&actions);
    run.machine.set_random(Box::new(Longest));
    // The attempt counter is unchanged: the next wait is the fifth (16 s) ...
    run.refuse(conn);
    assert_eq!(run.machine.next_deadline(), Some(run.now + secs(16)));
    // ... and it is a new wait, which a change may cut once again.
    run.input(Input::NetworkChanged);
    assert_eq!(run.machine.next_deadline(), Some(run.now + secs(1)));
}

#[test]
fn a_network_change_that_draws_longer_than_the_rest_is_the_one_cut() {
    let mut run = waiting_eight_seconds();
    run.advance(ms(7_500));
    // 500 ms are left; the draw is 1 s: the wait stays, and later events draw no more.
    run.input(Input::NetworkChanged);
    run.machine
        .set_random(Box::new(Draws([Duration::ZERO].into())));
    run.input(Input::NetworkChanged);
    assert_eq!(run.machine.next_deadline(), Some(run.now + ms(500)));
}

#[test]
fn a_wait_the_server_asked_for_is_never_cut() {
    let proxy_refused = || ConnectError::Proxy {
        proxy: "http://proxy:3128".into(),
        status: Some(407),
        detail: "HTTP/1.1 407 Proxy Authentication Required".into(),
    };
    let refusals: [(fn() -> ConnectError, Duration); 4] = [
        (
            || ConnectError::Rejected {
                status: 503,
                retry_after: Some(secs(120)),
            },
            secs(132),
        ),
        (
            || ConnectError::Rejected {
                status: 401,
                retry_after: None,
            },
            secs(60),
        ),
        (
            || ConnectError::Rejected {
                status: 403,
                retry_after: Some(secs(5)),
            },
            secs(60),
        ),
        (proxy_refused, secs(60)),
    ];
    for (error, wait) in refusals {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.input(Input::ConnectFailed {
            conn,
            error: error(),
        });
        let until = run.now + wait;
        assert_eq!(run.machine.next_deadline(), Some(until), "{:?}", error());
        for _ in 0..5 {
            run.advance(secs(1));
            assert!(run.input(Input::NetworkChanged).is_empty());
        }
        assert_eq!(run.machine.next_deadline(), Some(until), "{:?}", error());
    }
    // A 503 without Retry-After is a plain wait: cut.
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    run.input(Input::ConnectFailed {
        conn,
        error: ConnectError::Rejected {
            status: 503,
            retry_after: None,
        },
    });
    run.machine.set_random(Box::new(Draws([ms(200)].into())));
    run.input(Input::NetworkChanged);
    assert_eq!(run.machine.next_deadline(), Some(run.now + ms(200)));
}

#[test]
fn a_stalled_attempt_is_abandoned_at_its_deadline_whatever_its_thread_does() {
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    let deadline = run.now + secs(10);
    run.input(Input::AttemptStarted { conn, deadline });
    let (waited, actions) = run.next();
    assert_eq!(waited, secs(10));
    assert_eq!(
        actions,
        [Action::Abandon {
            conn,
            timed_out: true
        }]
    );
    // The driver reports the stage that ran out; a backoff follows.
    let actions = run.input(Input::ConnectFailed {
        conn,
        error: ConnectError::Timeout(Stage::Upgrade),
    });
    assert!(actions.contains(&Action::Publish));
    assert_eq!(run.machine.state(), State::Backoff);
    assert!(run.machine.last_error().unwrap().contains("upgrade"));
    // The real thread's late report is ignored.
    assert!(run.refuse(conn).is_empty());
    assert_eq!(run.machine.state(), State::Backoff);
}

#[test]
fn the_liveness_is_judged_when_the_driver_said_and_once() {
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    run.connect(conn);
    run.input(Input::LivenessAt {
        conn,
        at: Some(run.now + secs(30)),
    });
    let (waited, actions) = run.next();
    assert_eq!(waited, secs(30));
    assert_eq!(actions, [Action::CheckLiveness { conn }]);
    // Until the driver answers, nothing more is due.
    assert_eq!(run.machine.next_deadline(), None);
    // A late answer for an older connection changes nothing.
    run.input(Input::LivenessAt {
        conn: conn + 7,
        at: Some(run.now),
    });
    assert_eq!(run.machine.next_deadline(), None);
    // The verdict "dead" ends the connection like any other death.
    let actions = run.input(Input::Dead {
        conn,
        reason: "no heartbeat answer".into(),
        idle: None,
    });
    assert!(actions.contains(&Action::Teardown { graceful: false }));
}

#[test]
fn reload_during_a_connect_abandons_it_and_dials_again_at_once() {
    let mut run = Run::new(settings());
    let first = Run::dialed(&run.start());
    let actions = run.input(Input::Reload { writes_idle: true });
    assert_eq!(actions[0], Action::ReloadFiles);
    assert!(actions.contains(&Action::Abandon {
        conn: first,
        timed_out: false
    }));
    let second = Run::dialed(&actions);
    assert_ne!(first, second);
    // The first one's success arrives late: its connection is discarded.
    let actions = run.input(Input::Connected { conn: first });
    assert_eq!(actions, [Action::Discard { conn: first }]);
    run.connect(second);
    assert_eq!(run.machine.active(), Some(second));
}

#[test]
fn reload_while_connected_closes_or_cuts_and_resets_the_backoff() {
    let mut run = Run::new(settings());
    let conn = run.start_and_lose(3);
    run.connect(conn);
    let actions = run.input(Input::Reload { writes_idle: true });
    assert!(actions.contains(&Action::Close {
        code: CloseCode::Normal,
        reason: "reload",
        write_bound: Some(RELOAD_CLOSE_WRITE)
    }));
    assert!(actions.contains(&Action::Teardown { graceful: true }));
    let conn = Run::dialed(&actions);
    run.connect(conn);
    // Writes in flight: no Close queued behind them, the socket is cut.
    let actions = run.input(Input::Reload { writes_idle: false });
    assert!(!actions.iter().any(|a| matches!(a, Action::Close { .. })));
    assert!(actions.contains(&Action::Teardown { graceful: false }));
    let conn = Run::dialed(&actions);
    run.connect(conn);
    assert_eq!(run.lose(conn), secs(1), "the backoff was reset");
}

#[test]
fn stop_while_connected_closes_with_1001_and_waits_at_most_the_budget() {
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    run.connect(conn);
    let actions = run.input(Input::Terminate);
    assert_eq!(
        actions,
        [
            Action::NotifyStopping,
            Action::Close {
                code: CloseCode::Away,
                reason: "shutting down",
                write_bound: None
            }
        ]
    );
    // The server never answers.
    let (waited, actions) = run.next();
    assert_eq!(waited, STOP_BUDGET);
    assert!(actions.contains(&Action::Teardown { graceful: false }));
    assert_eq!(exit_of(&actions), Some(&Ending::Stopped));
}

#[test]
fn stop_after_the_server_answers_the_close_exits_at_once() {
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    run.connect(conn);
    run.input(Input::Terminate);
    let actions = run.input(Input::Closed {
        conn,
        code: Some(1001),
        reason: String::new(),
    });
    assert_eq!(actions[0], Action::Teardown { graceful: true });
    assert_eq!(exit_of(&actions), Some(&Ending::Stopped));
}

#[test]
fn stop_while_connecting_or_in_backoff_exits_at_once() {
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    let actions = run.input(Input::Terminate);
    assert!(actions.contains(&Action::Abandon {
        conn,
        timed_out: false
    }));
    assert_eq!(exit_of(&actions), Some(&Ending::Stopped));

    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    run.refuse(conn);
    let actions = run.input(Input::Terminate);
    assert_eq!(exit_of(&actions), Some(&Ending::Stopped));
    assert_eq!(run.machine.state(), State::Stopped);
    // A second signal does nothing more.
    assert!(run.input(Input::Terminate).is_empty());
}

#[test]
fn the_watchdog_is_fed_through_an_outage() {
    let mut run = Run::new(Settings {
        watchdog: Some(secs(15)),
        ..settings()
    });
    let mut conn = Run::dialed(&run.start());
    let mut fed = 0;
    // Ten minutes of refused attempts.
    let end = run.now + secs(600);
    while run.now < end {
        let actions = if run.machine.state() == State::Connecting {
            run.refuse(conn)
        } else {
            run.next().1
        };
        fed += actions.iter().filter(|a| **a == Action::Watchdog).count();
        if let Some(next) = actions.iter().find_map(|a| match a {
            Action::StartAttempt { conn } => Some(*conn),
            _ => None,
        }) {
            conn = next;
        }
        assert!(exit_of(&actions).is_none());
    }
    assert!((39..=41).contains(&fed), "fed {fed} times in 600 s");
}

#[test]
fn once_ends_with_the_first_matching_answer_or_the_first_failure() {
    let once = Settings {
        once: true,
        ..settings()
    };
    let mut run = Run::new(once.clone());
    let conn = Run::dialed(&run.start());
    run.connect(conn);
    // Any frame is no answer in probe mode.
    assert!(run.input(Input::Proven { conn, rtt: None }).is_empty());
    let actions = run.input(Input::Proven {
        conn,
        rtt: Some(ms(7)),
    });
    assert!(actions.contains(&Action::Teardown { graceful: true }));
    assert_eq!(exit_of(&actions), Some(&Ending::ProbeAnswered(ms(7))));

    let mut run = Run::new(once);
    let conn = Run::dialed(&run.start());
    let actions = run.refuse(conn);
    assert!(matches!(exit_of(&actions), Some(Ending::ProbeFailed(_))));
}

#[test]
fn status_refreshes_only_when_someone_reads_it() {
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    run.connect(conn);
    assert_eq!(run.machine.next_deadline(), None, "an idle client sleeps");

    let mut run = Run::new(Settings {
        refresh: Some(secs(30)),
        ..settings()
    });
    let conn = Run::dialed(&run.start());
    run.connect(conn);
    let (waited, actions) = run.next();
    assert_eq!((waited, actions), (secs(30), vec![Action::Refresh]));
}

#[test]
fn reconnects_count_connects_after_the_first() {
    let mut run = Run::new(settings());
    let conn = run.start_and_lose(3);
    run.connect(conn);
    assert_eq!(run.machine.reconnects(), 3);
    assert_eq!(run.machine.last_error(), Some("gone"));
}

/// What is counted and taught to the adaptive heartbeat is decided here, once, for
/// the current attempt or connection only: a straggler's late report teaches nothing.
#[test]
fn evidence_and_failure_counts_come_only_from_the_current_attempt_or_connection() {
    use crate::error::FailureReason;
    use crate::rules::adaptive::Evidence;
    let mut run = Run::new(settings());
    let first = Run::dialed(&run.start());
    let actions = run.refuse(first);
    assert!(actions.contains(&Action::CountFailure(FailureReason::Tcp)));
    assert!(actions.contains(&Action::Learn(Evidence::ConnectFailed)));
    // The straggler reports again: nothing.
    let actions = run.refuse(first);
    assert!(actions.is_empty(), "{actions:?}");
    let (_, actions) = run.next();
    let second = Run::dialed(&actions);
    run.input(Input::AttemptStarted {
        conn: second,
        deadline: run.now + secs(10),
    });
    let actions = run.input(Input::Connected { conn: second });
    let learn = actions
        .iter()
        .position(|a| *a == Action::Learn(Evidence::Reconnected));
    let activate = actions
        .iter()
        .position(|a| *a == Action::Activate { conn: second });
    assert!(learn < activate && learn.is_some(), "{actions:?}");
    // A late death of an older connection: nothing; the live one's: its idle gap.
    let late = run.input(Input::Dead {
        conn: first,
        reason: "late".into(),
        idle: Some(secs(40)),
    });
    assert!(late.is_empty(), "{late:?}");
    let actions = run.input(Input::Dead {
        conn: second,
        reason: "no heartbeat answer".into(),
        idle: Some(secs(40)),
    });
    assert!(actions.contains(&Action::Learn(Evidence::Lost(Some(secs(40))))));
}

/// The kernel's reports are judged against where the live connection is served
/// from: its own address or interface gone is death at once; anything else is not.
#[test]
fn link_changes_end_the_connection_only_when_they_take_its_address_or_interface() {
    let ours: std::net::IpAddr = "10.0.0.2".parse().unwrap();
    let other: std::net::IpAddr = "10.0.0.9".parse().unwrap();
    for fatal in [
        Input::AddressRemoved { addr: ours },
        Input::LinkDown {
            index: 3,
            name: Some("wlan0".into()),
        },
    ] {
        let mut run = Run::new(settings());
        let conn = Run::dialed(&run.start());
        run.connect(conn);
        // Before it is served, nothing is known to be its address.
        assert!(run.input(Input::AddressRemoved { addr: ours }).is_empty());
        let actions = run.input(Input::Serving {
            conn,
            local: Some((ours, Some(3))),
        });
        assert_eq!(actions, [Action::CheckLiveness { conn }]);
        assert!(run.input(Input::AddressRemoved { addr: other }).is_empty());
        assert!(
            run.input(Input::LinkDown {
                index: 4,
                name: None
            })
            .is_empty()
        );
        let actions = run.input(fatal);
        assert!(actions.contains(&Action::Teardown { graceful: false }));
        assert_eq!(run.machine.state(), State::Backoff);
        let error = run.machine.last_error().unwrap();
        assert!(
            error.contains("10.0.0.2 removed") || error.contains("wlan0 went down"),
            "{error}"
        );
    }
}

#[test]
fn a_stop_leaves_within_its_budget_any_other_ending_after_the_grace() {
    let mut run = Run::new(settings());
    let conn = Run::dialed(&run.start());
    run.connect(conn);
    let stopped_at = run.now;
    run.input(Input::Terminate);
    run.advance(secs(1));
    assert_eq!(run.machine.leave_by(run.now), stopped_at + STOP_BUDGET);
    let run = Run::new(settings());
    assert_eq!(run.machine.leave_by(run.now), run.now + LEAVE_GRACE);
}
