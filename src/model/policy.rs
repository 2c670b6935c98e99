//! The route policy: which agency kind may send which message kind to which.

use super::{AgencyKind, MessageKind};
use crate::error::{Error, Result};
use std::collections::BTreeSet;

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
        Ok(RoutePolicy { routes: set })
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
}
