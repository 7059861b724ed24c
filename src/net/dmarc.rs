//! DMARC for agents' emailed answers (`mail-auth`): is the From domain
//! the sender's own? mailroom reads mail after delivery, with no
//! connecting IP, so it checks aligned DKIM signatures itself and, when
//! configured, believes the `dmarc=` verdict of the operator's own MTA in
//! the topmost `Authentication-Results` header.
//!
//! The DNS is injectable: `Dmarc::system()` asks the system's resolvers;
//! `Dmarc::offline(records)` answers from the given TXT records only
//! (everything else does not exist), so tests run without a network.

use std::collections::HashMap;
use std::sync::Arc;

use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::resolver::ToFqdn;
use mail_auth::common::verify::DomainKey;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::dmarc::Policy;

use mail_auth::{
    AuthenticatedMessage, DmarcResult, MessageAuthenticator, Parameters, ResolverCache, SpfOutput,
    Txt,
};

use crate::config::DmarcCheck;

/// What the check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Aligned and authenticated, or the domain publishes no record that
    /// the configured check applies to.
    Pass,
    /// The domain publishes DMARC and the message does not pass it.
    Fail(String),
    /// DNS did not answer; worth trying again later.
    TryLater(String),
}

/// The checker: the resolver and, offline, the records it knows.
pub struct Dmarc {
    authenticator: MessageAuthenticator,
    records: Records,
    /// Why there is no DNS at all (no resolver configuration): every check
    /// then waits, as for a DNS outage.
    unavailable: Option<String>,
}

impl Dmarc {
    /// Resolves through the system's configuration (/etc/resolv.conf).
    pub fn system() -> Result<Dmarc, String> {
        let authenticator = MessageAuthenticator::new_system_conf()
            .map_err(|e| format!("the system's DNS resolver configuration: {e}"))?;
        Ok(Dmarc {
            authenticator,
            records: Records::default(),
            unavailable: None,
        })
    }

    /// The system resolver, or, when it cannot be set up, a checker whose
    /// every check waits (logged once here): mailroom still starts, and
    /// agents' answers wait for DNS like in an outage.
    pub fn system_or_waiting() -> Dmarc {
        Dmarc::system().unwrap_or_else(|reason| {
            tracing::warn!(%reason, "No DNS for DMARC checks: agents' emailed answers wait (then stay unverified); set agent_mail.dmarc = \"off\" to skip the check.");
            let mut dmarc = Dmarc::offline(&[]);
            dmarc.unavailable = Some(reason);
            dmarc
        })
    }

    /// Answers from `records` (name, TXT text) alone: `_dmarc.<domain>`
    /// for policies, `<selector>._domainkey.<domain>` for DKIM keys.
    pub fn offline(records: &[(&str, &str)]) -> Dmarc {
        let authenticator = MessageAuthenticator::new(Default::default(), Default::default())
            .expect("a resolver without servers needs no system configuration");
        let known = records
            .iter()
            .map(|(name, text)| {
                let bytes = text.as_bytes();
                let txt = if name.starts_with("_dmarc.") {
                    Txt::from(mail_auth::dmarc::Dmarc::parse(bytes))
                } else {
                    Txt::from(DomainKey::parse(bytes))
                };
                (name.to_fqdn().into_owned().into_boxed_str(), txt)
            })
            .collect();
        Dmarc {
            authenticator,
            records: Records {
                known: Arc::new(known),
                offline: true,
            },
            unavailable: None,
        }
    }

    /// Checks `raw` as `mode` asks; `authserv_id` names the MTA whose
    /// verdict counts.
    pub async fn check(&self, raw: &[u8], mode: DmarcCheck, authserv_id: Option<&str>) -> Verdict {
        if mode == DmarcCheck::Off {
            return Verdict::Pass;
        }
        if let Some(reason) = &self.unavailable {
            return Verdict::TryLater(reason.clone());
        }
        let Some(message) = AuthenticatedMessage::parse(raw) else {
            return Verdict::Fail("the message has no header section DMARC can read".into());
        };
        let from_domain = message
            .from
            .first()
            .and_then(|f| f.rsplit_once('@'))
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        let cache = &self.records;
        let dkim = self
            .authenticator
            .verify_dkim(Parameters::new(&message).with_txt_cache(cache))
            .await;
        let spf = SpfOutput::new(from_domain.clone());
        let output = self
            .authenticator
            .verify_dmarc(
                Parameters::new(DmarcParameters::new(&message, &dkim, &from_domain, &spf))
                    .with_txt_cache(cache),
            )
            .await;
        if output.dmarc_record().is_none() {
            return match output.dkim_result() {
                DmarcResult::TempError(e) => {
                    Verdict::TryLater(format!("DMARC of {from_domain}: {e}"))
                }
                _ => Verdict::Pass,
            };
        }
        // The policy that applies to this domain (its own, or the
        // organisation's sub-domain policy).
        let policy = output.policy();
        if mode == DmarcCheck::Enforced && !matches!(policy, Policy::Quarantine | Policy::Reject) {
            return Verdict::Pass;
        }
        if output.dkim_result() == &DmarcResult::Pass
            || authserv_id.is_some_and(|id| mta_says_pass(raw, id))
        {
            return Verdict::Pass;
        }
        match output.dkim_result() {
            DmarcResult::TempError(e) => Verdict::TryLater(format!("DMARC of {from_domain}: {e}")),
            _ => Verdict::Fail(format!(
                "DMARC fails for {from_domain} (p={policy}): no aligned DKIM signature verifies"
            )),
        }
    }
}

/// The topmost Authentication-Results header, when `authserv_id` wrote
/// it, says `dmarc=pass`. Lower ones may come from anyone.
fn mta_says_pass(raw: &[u8], authserv_id: &str) -> bool {
    let Some(header) = first_header(raw, "authentication-results") else {
        return false;
    };
    let unfolded = header.replace(['\r', '\n'], " ");
    let mut parts = unfolded.split(';');
    let id = parts.next().unwrap_or("").split_whitespace().next();
    if !id.is_some_and(|id| id.eq_ignore_ascii_case(authserv_id)) {
        return false;
    }
    parts.any(|p| {
        p.split_whitespace()
            .next()
            .is_some_and(|m| m.eq_ignore_ascii_case("dmarc=pass"))
    })
}

/// The topmost header field called `name`, its value as written (folded).
fn first_header(raw: &[u8], name: &str) -> Option<String> {
    let message = mail_parser::MessageParser::new().parse_headers(raw)?;
    let header = message
        .headers()
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))?;
    let value = raw.get(header.offset_start as usize..header.offset_end as usize)?;
    Some(String::from_utf8_lossy(value).into_owned())
}

/// The TXT records served before (or, offline, instead of) the DNS.
#[derive(Default, Clone)]
struct Records {
    known: Arc<HashMap<Box<str>, Txt>>,
    offline: bool,
}

impl ResolverCache<Box<str>, Txt> for Records {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        match self.known.get(name) {
            Some(txt) => Some(txt.clone()),
            None if self.offline => Some(Txt::Error(mail_auth::Error::Dns(
                mail_auth::DnsError::RecordNotFound(
                    mail_auth::hickory_resolver::proto::op::ResponseCode::NXDomain,
                ),
            ))),
            None => None,
        }
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_topmost_results_of_our_own_mta_count() {
        let ours = b"Authentication-Results: mx.example.com; spf=pass smtp.mailfrom=a@b.test;\r\n dmarc=pass header.from=b.test\r\nFrom: a@b.test\r\n\r\nx";
        assert!(mta_says_pass(ours, "mx.example.com"));
        assert!(!mta_says_pass(ours, "other.example.com"));
        let forged_below = b"Authentication-Results: mx.example.com; dmarc=fail header.from=b.test\r\nAuthentication-Results: mx.example.com; dmarc=pass\r\nFrom: a@b.test\r\n\r\nx";
        assert!(!mta_says_pass(forged_below, "mx.example.com"));
    }
}
