//! The route policy: which agency kind may send which message kind to which.

use super::{AgencyKind, MessageKind};
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};

/// One allowed route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    pub from: AgencyKind,
    pub to: AgencyKind,
    pub kind: MessageKind,
}

/// The federation's route policy, checked by the sender node at submit and
/// again by the receiving node.
///
/// `feedback` is never listed: a feedback is allowed exactly when it answers
/// a message that its recipient sent to its sender (checked against the
/// store by the node, since the policy itself holds no messages).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoutePolicy {
    routes: BTreeSet<Route>,
    /// The reply window of a route that has one (ms): a message on it must
    /// be answered within this long of its creation (`reply_by_ms` is set
    /// to that when the submitter gives none, and may only be earlier).
    reply_windows: BTreeMap<Route, u64>,
    /// Routes whose messages expect feedback (a reply window implies it).
    feedback_expected: BTreeSet<Route>,
    /// Routes whose messages wait for a second principal's approval
    /// before the sending node signs and sends them.
    approval_required: BTreeSet<Route>,
}

impl RoutePolicy {
    pub fn new(routes: impl IntoIterator<Item = Route>) -> Result<Self> {
        let mut set = BTreeSet::new();
        for r in routes {
            if r.kind == MessageKind::Feedback {
                return Err(Error::invalid(
                    "feedback routes are implicit (a feedback goes back only to the sender \
                     of the message it answers); remove feedback from the route list",
                ));
            }
            set.insert(r);
        }
        Ok(RoutePolicy {
            routes: set,
            reply_windows: BTreeMap::new(),
            feedback_expected: BTreeSet::new(),
            approval_required: BTreeSet::new(),
        })
    }

    /// Gives a listed route a reply window (its messages expect feedback).
    pub fn set_reply_window(&mut self, route: Route, window_ms: u64) -> Result<()> {
        self.listed(route, "a reply window")?;
        self.reply_windows.insert(route, window_ms);
        self.feedback_expected.insert(route);
        Ok(())
    }

    /// Says whether messages on a listed route expect feedback.
    pub fn set_expects_feedback(&mut self, route: Route, expected: bool) -> Result<()> {
        self.listed(route, "expects_feedback")?;
        if expected {
            self.feedback_expected.insert(route);
        } else if self.reply_windows.contains_key(&route) {
            return Err(Error::invalid(format!(
                "{} from {} to {} has a reply window, so it expects feedback",
                route.kind, route.from, route.to
            )));
        }
        Ok(())
    }

    fn listed(&self, route: Route, what: &str) -> Result<()> {
        if self.routes.contains(&route) {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "{what} for {} from {} to {}, which is not a route",
                route.kind, route.from, route.to
            )))
        }
    }

    /// Makes messages on a listed route wait for approval.
    pub fn require_approval(&mut self, route: Route) -> Result<()> {
        self.listed(route, "requires_approval")?;
        self.approval_required.insert(route);
        Ok(())
    }

    /// Whether messages of `kind` from `from` to `to` wait for approval.
    pub fn requires_approval(&self, from: AgencyKind, kind: MessageKind, to: AgencyKind) -> bool {
        self.approval_required.contains(&Route { from, to, kind })
    }

    /// Whether messages of `kind` from `from` to `to` expect feedback by
    /// the policy (a message with a reply-by deadline expects it anyway).
    pub fn expects_feedback(&self, from: AgencyKind, kind: MessageKind, to: AgencyKind) -> bool {
        self.feedback_expected.contains(&Route { from, to, kind })
    }

    /// The reply window of a route (ms), if it has one.
    pub fn reply_window_ms(
        &self,
        from: AgencyKind,
        kind: MessageKind,
        to: AgencyKind,
    ) -> Option<u64> {
        self.reply_windows.get(&Route { from, to, kind }).copied()
    }

    /// Whether a non-feedback message of `kind` may go from `from` to `to`.
    pub fn check(&self, from: AgencyKind, kind: MessageKind, to: AgencyKind) -> Result<()> {
        if kind == MessageKind::Feedback || self.routes.contains(&Route { from, to, kind }) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "route policy forbids {kind} from a {from} agency to a {to} agency"
            )))
        }
    }

    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listed_routes_pass() {
        let p = RoutePolicy::new([Route {
            from: AgencyKind::Discipline,
            to: AgencyKind::PublicSecurity,
            kind: MessageKind::ClueTransfer,
        }])
        .unwrap();
        assert!(
            p.check(
                AgencyKind::Discipline,
                MessageKind::ClueTransfer,
                AgencyKind::PublicSecurity
            )
            .is_ok()
        );
        let err = p
            .check(
                AgencyKind::PublicSecurity,
                MessageKind::ClueTransfer,
                AgencyKind::Discipline,
            )
            .unwrap_err();
        assert!(matches!(err, Error::PermissionDenied(_)));
    }

    #[test]
    fn only_a_listed_route_has_a_reply_window() {
        let route = Route {
            from: AgencyKind::Discipline,
            to: AgencyKind::Personnel,
            kind: MessageKind::RectificationSuggestion,
        };
        let mut policy = RoutePolicy::new([route]).unwrap();
        policy.set_reply_window(route, 1_000).unwrap();
        assert_eq!(
            policy.reply_window_ms(route.from, route.kind, route.to),
            Some(1_000)
        );
        let unlisted = Route {
            kind: MessageKind::ClueTransfer,
            ..route
        };
        assert!(policy.set_reply_window(unlisted, 1_000).is_err());
        assert_eq!(
            policy.reply_window_ms(unlisted.from, unlisted.kind, unlisted.to),
            None
        );
    }
}
