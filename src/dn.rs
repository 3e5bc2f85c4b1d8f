//! Distinguished names in one comparable form, for `tls_client_auth_subject_dn`
//! (RFC 8705 §2.1.2: the expected subject DN in RFC 4514 string representation).
//!
//! Both the configured string and the certificate's subject become the same canonical
//! RFC 4514 string, and are compared as strings:
//! - RDNs in RFC 4514 order (the last RDN of the certificate's sequence first), joined by
//!   `,`; the attributes of a multi-valued RDN sorted, joined by `+`;
//! - attribute types as RFC 4514 §3 short names (`CN`, `L`, `ST`, `O`, `OU`, `C`,
//!   `STREET`, `DC`, `UID`), upper case, else as a dotted OID (`emailAddress`, `E` and
//!   `serialNumber` are read as theirs);
//! - values unescaped, then compared as RFC 4517 caseIgnoreMatch does, approximately:
//!   leading and trailing spaces dropped, inner runs of spaces made one, ASCII and
//!   Unicode letters lower-cased; then escaped again per RFC 4514 §2.4;
//! - a value that is not a string (BER `#…` in the config, a non-string type in the
//!   certificate) is compared as lower-case hex of its BER encoding.
//!
//! A configured DN that does not parse is refused by config validation; a certificate
//! subject that does not convert matches nothing.

use x509_parser::der_parser::asn1_rs::{Tag, ToDer};
use x509_parser::x509::X509Name;

/// RFC 4514 §3 short names, and the aliases operators write for two common OIDs.
const NAMES: [(&str, &str); 12] = [
    ("CN", "2.5.4.3"),
    ("L", "2.5.4.7"),
    ("ST", "2.5.4.8"),
    ("O", "2.5.4.10"),
    ("OU", "2.5.4.11"),
    ("C", "2.5.4.6"),
    ("STREET", "2.5.4.9"),
    ("DC", "0.9.2342.19200300.100.1.25"),
    ("UID", "0.9.2342.19200300.100.1.1"),
    ("EMAILADDRESS", "1.2.840.113549.1.9.1"),
    ("E", "1.2.840.113549.1.9.1"),
    ("SERIALNUMBER", "2.5.4.5"),
];

/// How an attribute type is written in the canonical form: the short name, else the OID.
fn canonical_type(oid: &str) -> String {
    NAMES.iter().take(9).find(|(_, o)| *o == oid).map_or_else(|| oid.to_string(), |(n, _)| n.to_string())
}

/// A type as configured (a name in any case, or a dotted OID, optionally `OID.` prefixed).
fn parse_type(t: &str) -> Option<String> {
    let t = t.trim();
    let upper = t.to_ascii_uppercase();
    if let Some((_, oid)) = NAMES.iter().find(|(n, _)| *n == upper) {
        return Some(canonical_type(oid));
    }
    let oid = upper.strip_prefix("OID.").unwrap_or(&upper);
    let valid = !oid.is_empty()
        && oid.split('.').count() >= 2
        && oid.split('.').all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()));
    valid.then(|| canonical_type(oid))
}

/// caseIgnoreMatch, approximately: insignificant spaces out, letters lower-cased.
fn fold(v: &str) -> String {
    v.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ").to_lowercase()
}

/// RFC 4514 §2.4 escaping of a (folded) string value.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, ' ' | '#'))
            || (i == last && c == ' ');
        if c == '\0' {
            out.push_str("\\00");
        } else {
            if special {
                out.push('\\');
            }
            out.push(c);
        }
    }
    out
}

/// One attribute, canonical: `TYPE=value` (the value folded and escaped, or `#hex`).
fn attribute(t: String, value: Value) -> String {
    match value {
        Value::Text(s) => format!("{t}={}", escape(&fold(&s))),
        Value::Ber(hex) => format!("{t}=#{hex}"),
    }
}

enum Value {
    Text(String),
    /// Lower-case hex of the BER encoding.
    Ber(String),
}

fn join(rdns: Vec<Vec<String>>) -> String {
    rdns.into_iter()
        .map(|mut attrs| {
            attrs.sort();
            attrs.join("+")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The canonical form of a configured RFC 4514 string; `None` if it does not parse.
pub fn canonical(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut rdns = vec![Vec::new()];
    let mut chars = s.chars().peekable();
    loop {
        // attributeType "="
        let mut t = String::new();
        let mut equals = false;
        for c in chars.by_ref() {
            if c == '=' {
                equals = true;
                break;
            }
            t.push(c);
        }
        if !equals {
            return None;
        }
        let t = parse_type(&t)?;
        // attributeValue: a string with escapes, or `#` hex.
        let mut raw = String::new();
        let mut bytes: Vec<u8> = Vec::new();
        let hex = chars.peek() == Some(&'#');
        let mut end = None;
        while let Some(c) = chars.next() {
            match c {
                ',' | '+' => {
                    end = Some(c);
                    break;
                }
                '\\' => {
                    let n = chars.next()?;
                    if n.is_ascii_hexdigit() {
                        let m = chars.next().filter(char::is_ascii_hexdigit)?;
                        let b = u8::from_str_radix(&format!("{n}{m}"), 16).ok()?;
                        flush(&mut raw, &mut bytes, Some(b))?;
                    } else if matches!(n, ' ' | '"' | '#' | '+' | ',' | ';' | '<' | '=' | '>' | '\\') {
                        flush(&mut raw, &mut bytes, None)?;
                        raw.push(n);
                    } else {
                        return None;
                    }
                }
                c => {
                    flush(&mut raw, &mut bytes, None)?;
                    raw.push(c);
                }
            }
        }
        flush(&mut raw, &mut bytes, None)?;
        let value = if hex {
            let h = raw.trim().strip_prefix('#')?;
            if h.is_empty() || h.len() % 2 != 0 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            Value::Ber(h.to_ascii_lowercase())
        } else {
            Value::Text(raw)
        };
        rdns.last_mut()?.push(attribute(t, value));
        match end {
            None => break,
            Some(',') => rdns.push(Vec::new()),
            Some(_) => {}
        }
    }
    Some(join(rdns))
}

/// Collect `\hh` escapes as bytes until a character that is not one: then they must be UTF-8.
fn flush(raw: &mut String, bytes: &mut Vec<u8>, next: Option<u8>) -> Option<()> {
    match next {
        Some(b) => bytes.push(b),
        None if !bytes.is_empty() => {
            raw.push_str(std::str::from_utf8(bytes).ok()?);
            bytes.clear();
        }
        None => {}
    }
    Some(())
}

/// The canonical form of a certificate's subject; `None` if an attribute cannot be read.
pub fn of_name(name: &X509Name<'_>) -> Option<String> {
    let mut rdns = Vec::new();
    for rdn in name.iter() {
        let mut attrs = Vec::new();
        for a in rdn.iter() {
            // An attribute type that is no dotted OID (found by the `dn` fuzz target: an
            // empty one rendered as `=#0000`) cannot be read: no subject, as documented.
            let id = a.attr_type().to_id_string();
            if id.is_empty() || !id.split('.').all(|arc| !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit())) {
                return None;
            }
            let t = canonical_type(&id);
            let any = a.attr_value();
            let value = match any.tag() {
                Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString | Tag::VisibleString => {
                    Value::Text(std::str::from_utf8(any.data).ok()?.to_string())
                }
                Tag::BmpString => {
                    let units: Vec<u16> = any
                        .data
                        .chunks(2)
                        .map(|c| Some(u16::from_be_bytes([c[0], *c.get(1)?])))
                        .collect::<Option<_>>()?;
                    Value::Text(String::from_utf16(&units).ok()?)
                }
                _ => Value::Ber(any.to_der_vec().ok()?.iter().map(|b| format!("{b:02x}")).collect()),
            };
            attrs.push(attribute(t, value));
        }
        rdns.push(attrs);
    }
    // RFC 4514 §2.1: the last RDN of the sequence is written first.
    rdns.reverse();
    Some(join(rdns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_forms_that_mean_the_same_name_agree() {
        let want = canonical("CN=client one,O=Example Corp,C=SE").unwrap();
        assert_eq!(want, "CN=client one,O=example corp,C=se");
        for same in [
            "cn=client one, o=Example Corp, c=SE",
            "CN=Client  One,O=EXAMPLE CORP,C=se",
            "2.5.4.3=client one,OID.2.5.4.10=example corp,c=SE",
            "CN=client\\20one,O=example corp,C=SE",
            "CN=client\\ one,O=example corp,C=SE",
        ] {
            assert_eq!(canonical(same).as_deref(), Some(want.as_str()), "{same}");
        }
        for other in ["CN=client two,O=Example Corp,C=SE", "O=Example Corp,CN=client one,C=SE", "CN=client one"] {
            assert_ne!(canonical(other).as_deref(), Some(want.as_str()), "{other}");
        }
        // Multi-valued RDNs in any order; escaped specials stay part of the value.
        assert_eq!(canonical("CN=a+UID=b,O=x"), canonical("UID=b+CN=a,O=x"));
        assert_eq!(canonical("CN=a\\,b,O=x").unwrap(), "CN=a\\,b,O=x");
        assert_eq!(canonical("CN=caf\\C3\\A9").unwrap(), "CN=café");
        assert_eq!(canonical("emailAddress=A@B.example").unwrap(), "1.2.840.113549.1.9.1=a@b.example");
        assert_eq!(canonical("CN=#0C0161").unwrap(), "CN=#0c0161");
    }

    #[test]
    fn malformed_names_are_refused() {
        for bad in ["", "CN", "CN=a,", "=a", "XX=a", "CN=a\\", "CN=a\\zz", "CN=\\C3", "CN=#0", "CN=#zz", "1=a"] {
            assert_eq!(canonical(bad), None, "{bad:?}");
        }
    }
}
