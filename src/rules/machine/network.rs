//! The network-change rules of the machine (SPEC "Network changes"): a report is
//! held against where the live connection is served from, and a new address or
//! default route cuts a plain backoff wait once, never a wait the server asked for.

use std::net::IpAddr;
use std::time::Instant;

use super::{ConnId, Input, Machine, Phase, Timer, fmt_duration};

/// Whether a network change may cut a backoff wait short (SPEC "Network changes").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// A plain backoff wait, not cut yet.
    Allowed,
    /// Cut once already: one draw per wait, or a flapping address would draw again
    /// and again until one lands near zero.
    Done,
    /// The server asked for this wait (`Retry-After`, or refused the credentials):
    /// a change of our network changes nothing for the server. Names why.
    Never(&'static str),
}

impl Machine {
    /// The live connection and where it is served from, once known.
    fn served_from(&self) -> Option<(ConnId, (IpAddr, Option<u32>))> {
        match self.phase {
            Phase::Connected {
                conn,
                local: Some(local),
                ..
            } => Some((conn, local)),
            _ => None,
        }
    }

    /// The kernel removed `addr`: if the live connection is served from it, the
    /// connection is dead at once, far sooner than its heartbeat could tell.
    pub(super) fn address_removed(&mut self, addr: IpAddr, now: Instant) {
        if let Some((conn, (ip, _))) = self.served_from() {
            if ip == addr {
                let reason = format!("local address {addr} removed");
                self.dead(conn, reason, now);
            }
        }
    }

    /// Interface `index` went down: if it carries the live connection, the
    /// connection is dead at once.
    pub(super) fn link_down(&mut self, index: u32, name: Option<String>, now: Instant) {
        if let Some((conn, (_, interface))) = self.served_from() {
            if interface == Some(index) {
                let name = name.unwrap_or_else(|| format!("#{index}"));
                let reason = format!("interface {name} went down");
                self.dead(conn, reason, now);
            }
        }
    }

    fn dead(&mut self, conn: ConnId, reason: String, now: Instant) {
        let actions = self.handle(
            Input::Dead {
                conn,
                reason,
                idle: None,
            },
            now,
        );
        self.actions.extend(actions);
    }

    /// While waiting to retry, a new address or default route cuts the wait to a
    /// random time in `[0, backoff-initial]`: the link is probably back, and the
    /// draw (the attempt counter unchanged) keeps a fleet that regains its link
    /// together from returning in lock-step. At most once per wait, and never a
    /// wait the server asked for; the events that change nothing are logged at
    /// debug, as a flapping interface sends many.
    pub(super) fn network_changed(&mut self, now: Instant) {
        if self.stop_by.is_some() {
            return;
        }
        let (Phase::Backoff { cut, .. }, Some(until)) =
            (&mut self.phase, self.timers.get(Timer::Reconnect))
        else {
            return;
        };
        match *cut {
            Cut::Never(why) => {
                log::debug!("network changed: the wait stays, {why}");
            }
            Cut::Done => {
                log::debug!("network changed again: this wait was cut once already");
            }
            Cut::Allowed => {
                *cut = Cut::Done;
                let sooner = now + self.random.below(self.backoff.initial());
                if sooner < until {
                    log::info!(
                        "network changed: reconnecting in {}",
                        fmt_duration(sooner - now)
                    );
                    self.timers.set(Timer::Reconnect, Some(sooner));
                } else {
                    log::debug!("network changed: the wait ends sooner anyway");
                }
            }
        }
    }
}
