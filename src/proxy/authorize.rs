//! Phase 3, authorize: the token must carry every scope the route requires, and every
//! claim value its rules (`[route.claims]`) ask for.
//!
//! A claim rule that fails — a wrong value, or a claim the token does not carry — is
//! `403 insufficient_scope`: the token is valid, it just does not grant this route
//! (RFC 6750 §3.1), and a new token with the right claims would pass. Never a 5xx.

use super::error::ProxyError;
use crate::config::{ClaimRule, ClaimTest};
use crate::tokens::validate::{ClaimValue, Principal};

pub fn authorize(scopes: &[String], claims: &[ClaimRule], principal: &Principal) -> Result<(), ProxyError> {
    if !scopes.iter().all(|s| principal.has_scope(s)) {
        return Err(ProxyError::InsufficientScope(scopes.join(" ")));
    }
    if let Some(rule) = claims.iter().find(|r| !holds(r, principal.claim(&r.claim))) {
        tracing::debug!(claim = %rule.claim, "claim rule not met");
        return Err(ProxyError::ClaimNotMet(scopes.join(" ")));
    }
    Ok(())
}

/// Does `value` (absent: the token lacks the claim) satisfy `rule`?
fn holds(rule: &ClaimRule, value: Option<&ClaimValue>) -> bool {
    let Some(value) = value else { return false };
    match (&rule.test, value) {
        (ClaimTest::Equals(want), ClaimValue::Text(t)) => **t == **want,
        (ClaimTest::Equals(want), ClaimValue::List(l)) => matches!(&**l, [only] if **only == **want),
        (ClaimTest::OneOf(set), ClaimValue::Text(t)) => set.iter().any(|w| **w == **t),
        (ClaimTest::OneOf(set), ClaimValue::List(l)) => l.iter().any(|v| set.iter().any(|w| **w == **v)),
        (ClaimTest::Contains(want), ClaimValue::Text(t)) => t.split(' ').any(|w| w == want),
        (ClaimTest::Contains(want), ClaimValue::List(l)) => l.iter().any(|v| **v == **want),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(test: ClaimTest) -> ClaimRule {
        ClaimRule { claim: "c".into(), test }
    }
    fn text(s: &str) -> ClaimValue {
        ClaimValue::Text(s.into())
    }
    fn list(v: &[&str]) -> ClaimValue {
        ClaimValue::List(v.iter().map(|s| (*s).into()).collect())
    }

    #[test]
    fn rules_on_strings_and_arrays() {
        let eq = rule(ClaimTest::Equals("acme".into()));
        assert!(holds(&eq, Some(&text("acme"))));
        assert!(!holds(&eq, Some(&text("acme2"))));
        assert!(holds(&eq, Some(&list(&["acme"]))));
        assert!(!holds(&eq, Some(&list(&["acme", "evil"]))));
        assert!(!holds(&eq, None));
        let one = rule(ClaimTest::OneOf(vec!["a".into(), "b".into()]));
        assert!(holds(&one, Some(&text("b"))));
        assert!(!holds(&one, Some(&text("a b"))));
        assert!(holds(&one, Some(&list(&["x", "a"]))));
        assert!(!holds(&one, Some(&list(&[]))));
        let has = rule(ClaimTest::Contains("billing".into()));
        assert!(holds(&has, Some(&list(&["ops", "billing"]))));
        assert!(!holds(&has, Some(&list(&["billing-admin"]))));
        assert!(holds(&has, Some(&text("read billing"))));
        assert!(!holds(&has, Some(&text("billingx"))));
    }
}
