//! A route's `quota = { per, rate, window, burst }` (issue 14).

use std::time::Duration;

use toml::Spanned;

use super::Validator;
use crate::config::ConfigError;
use crate::config::model::{QuotaPer, RouteQuota};
use crate::config::raw::RawQuota;

/// The largest `rate` and `burst`, as for `[rate_limit]`.
const MAX_UNITS: u64 = 1_000_000;
/// The longest window: a year.
const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

impl Validator<'_> {
    pub(super) fn route_quota(&self, raw: &Spanned<RawQuota>, id: &str) -> Result<RouteQuota, ConfigError> {
        let q = raw.get_ref();
        let per = match q.per.get_ref().as_str() {
            "client" => QuotaPer::Client,
            "user" => QuotaPer::User,
            "ip" => QuotaPer::Ip,
            other => {
                return Err(
                    self.err(q.per.span(), format!("unknown quota per {other:?}: use \"client\", \"user\" or \"ip\""))
                );
            }
        };
        let units = |v: &Spanned<u64>, what: &str| -> Result<u32, ConfigError> {
            match *v.get_ref() {
                0 => Err(self.err(v.span(), format!("quota {what} must be greater than zero"))),
                n if n > MAX_UNITS => Err(self.err(v.span(), format!("quota {what} must be at most {MAX_UNITS}"))),
                n => Ok(u32::try_from(n).unwrap_or(u32::MAX)),
            }
        };
        let rate = units(&q.rate, "rate")?;
        let burst = match &q.burst {
            None => rate,
            Some(b) => {
                let burst = units(b, "burst")?;
                // The policy advertises `burst` units; fewer than `rate` would make a client
                // unable to spend what the window promises.
                if burst < rate {
                    return Err(self.err(
                        b.span(),
                        format!(
                            "quota burst ({burst}) must be at least its rate ({rate}); leave it out for burst = rate"
                        ),
                    ));
                }
                burst
            }
        };
        let window = self.duration(&q.window, Duration::from_secs(1))?;
        if let Some(w) = &q.window {
            if window.subsec_nanos() != 0 {
                return Err(self.err(
                    w.span(),
                    format!(
                        "quota window {:?} must be whole seconds (RateLimit-Policy counts in seconds)",
                        w.get_ref()
                    ),
                ));
            }
            if window > MAX_WINDOW {
                return Err(self.err(w.span(), "quota window must be at most 366d"));
            }
        }
        Ok(RouteQuota { per, rate, window, burst, id: id.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::{Config, ConfigError, QuotaPer};

    /// A config whose one route (line 8) has `quota` (and `public = true` when asked).
    fn parse(quota: &str, public: bool) -> Result<Config, ConfigError> {
        let text = format!(
            "issuer = \"https://auth.example\"\n[[listener]]\naddress = \"127.0.0.1:8443\"\ntls = false\n\
             [[key]]\nid = \"k\"\nfile = \"k.pem\"\n[[route]]\nprefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\n\
             public = {public}\nquota = {quota}\n"
        );
        Config::parse(&text, Path::new("gw.toml"))
    }

    #[test]
    fn a_quota_defaults_to_burst_rate_and_a_one_second_window() {
        let c = parse("{ per = \"client\", rate = 100 }", false).unwrap();
        let q = c.routes[0].quota.clone().unwrap();
        assert_eq!((q.per, q.rate, q.burst, q.window), (QuotaPer::Client, 100, 100, Duration::from_secs(1)));
        assert_eq!(q.policy_window_secs(), 1);
        let c = parse("{ per = \"user\", rate = 10, window = \"1m\", burst = 30 }", false).unwrap();
        let q = c.routes[0].quota.clone().unwrap();
        assert_eq!((q.per, q.rate, q.burst, q.window), (QuotaPer::User, 10, 30, Duration::from_secs(60)));
        assert_eq!(q.policy_window_secs(), 180);
        assert!(parse("{ per = \"ip\", rate = 5 }", true).unwrap().routes[0].quota.is_some());
        assert!(parse("{ per = \"ip\", rate = 5 }", false).is_ok());
    }

    #[test]
    fn bad_quotas_are_refused_with_their_line() {
        for (quota, public, reason) in [
            ("{ per = \"client\", rate = 0 }", false, "quota rate must be greater than zero"),
            ("{ per = \"client\", rate = 2000000 }", false, "quota rate must be at most 1000000"),
            ("{ per = \"client\", rate = 10, burst = 0 }", false, "quota burst must be greater than zero"),
            ("{ per = \"client\", rate = 10, burst = 5 }", false, "quota burst (5) must be at least its rate (10)"),
            ("{ per = \"client\", rate = 10, window = \"soon\" }", false, "bad duration \"soon\""),
            ("{ per = \"client\", rate = 10, window = \"0s\" }", false, "duration must be greater than zero"),
            ("{ per = \"client\", rate = 10, window = \"1500ms\" }", false, "must be whole seconds"),
            ("{ per = \"client\", rate = 10, window = \"400d\" }", false, "at most 366d"),
            ("{ per = \"tenant\", rate = 10 }", false, "unknown quota per \"tenant\""),
            ("{ per = \"client\", rate = 10 }", true, "its quota can only be per = \"ip\""),
            ("{ per = \"user\", rate = 10 }", true, "its quota can only be per = \"ip\""),
        ] {
            let e = parse(quota, public).unwrap_err();
            assert_eq!(e.line, 12, "{quota}: {e}");
            assert!(e.reason.contains(reason), "{quota}: {e}");
        }
        // Unknown and missing keys: refused by the schema, with the line too.
        for quota in ["{ per = \"client\", rate = 10, limit = 5 }", "{ rate = 10 }", "{ per = \"client\" }"] {
            let e = parse(quota, false).unwrap_err();
            assert_eq!(e.line, 12, "{quota}: {e}");
        }
    }
}
