//! What an identity value (a `sub`, `client_id`, `jti`, `username`) may look like, for the
//! two places that must agree on it: the mapping of a trusted issuer's token (which
//! forwards such values to the upstream) and the blocks API (which names them). A value
//! one of them refused and the other took would be a subject that passes changed, or one
//! that can never be blocked.

/// The longest identity value in bytes. OpenID Connect caps `sub` at 255 ASCII characters;
/// anything longer is a mistake or an attack.
pub const MAX_IDENTITY: usize = 256;

/// Why a value is not a tidy identity value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Untidy {
    #[error("is empty")]
    Empty,
    #[error("is over {0} bytes")]
    TooLong(usize),
    #[error("has surrounding spaces")]
    Padded,
    #[error("has control or invisible characters")]
    Invisible,
}

/// Is `v` a value two readers see alike: non-empty, at most `max` bytes, no leading or
/// trailing (Unicode) whitespace, and no character that is invisible or that a parser may
/// drop or act on: controls (C0, DEL, C1), format characters and other default-ignorable
/// ones (zero-width, bidirectional controls, U+FEFF, tag characters), line and paragraph
/// separators. `" alice"` would reach the upstream as `alice`, `"al\u{200B}ice"` would
/// look like `alice` in every log.
pub fn check(v: &str, max: usize) -> Result<(), Untidy> {
    if v.is_empty() {
        return Err(Untidy::Empty);
    }
    if v.len() > max {
        return Err(Untidy::TooLong(max));
    }
    if v.trim() != v {
        return Err(Untidy::Padded);
    }
    if v.chars().any(invisible) {
        return Err(Untidy::Invisible);
    }
    Ok(())
}

/// [`check`] with [`MAX_IDENTITY`].
pub fn is_identity(v: &str) -> bool {
    check(v, MAX_IDENTITY).is_ok()
}

/// General category Cc, Cf, Zl or Zp, or Default_Ignorable_Code_Point (Unicode 15.1),
/// listed by hand: the crate carries no Unicode property tables. Also what the proxy's path
/// check refuses (some upstreams strip these before comparing paths).
pub fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{0600}'..='\u{0605}'
                | '\u{061C}'
                | '\u{06DD}'
                | '\u{070F}'
                | '\u{0890}'..='\u{0891}'
                | '\u{08E2}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFFB}'
                | '\u{110BD}'
                | '\u{110CD}'
                | '\u{13430}'..='\u{1343F}'
                | '\u{1BCA0}'..='\u{1BCA3}'
                | '\u{1D173}'..='\u{1D17A}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// Would some framework read this (decoded) parameter or field name as `access_token`?
/// Judged the way the loosest ones read names, so that what one of them would take for a
/// token is taken out (or refused, or redacted) by the gateway:
/// - PHP ends a name at a NUL byte, maps `.`, ` ` and `[` to `_`, and reads
///   `access_token[]` / `access_token[x]` as an array named `access_token`;
/// - Rack drops brackets (`[access_token]`, `access_token]`), some frameworks drop every
///   separator (`accessToken`, `access-token`);
/// - classic ASP.NET decodes `%uXXXX` (`%u0061ccess_token`);
/// - Unicode-aware case-insensitive comparisons (Java's `equalsIgnoreCase`, .NET's
///   `OrdinalIgnoreCase`, full case folding) match `ſ` (long s) to `s`, the Kelvin sign to
///   `k`, `ẞ` to `ss`; a reader that normalises to NFKC sees `𝐚`, `ᵃ`, `ª`, `ⓐ` or a
///   fullwidth `ａ` as `a`.
///
/// So: up to a NUL, `%uXXXX` decoded, NFKC-normalised, case-folded (lower, upper, lower),
/// on its letters and digits only, the name (or its part before the first `[`) reads
/// `accesstoken`. Names such as `access_tokens` or `my_access_token` do not.
pub fn is_access_token_name(name: &str) -> bool {
    let name = name.split('\0').next().unwrap_or_default();
    folds_to_access_token(name) || name.split_once('[').is_some_and(|(base, _)| folds_to_access_token(base))
}

/// A header name on its ASCII letters and digits, the first 64 of them: `X-Forwarded-For`,
/// `x_forwarded.for` and `XForwardedFor` are all `xforwardedfor`, as some upstream reads
/// them (CGI turns `-` into `_`, some frameworks drop separators). Enough for every family
/// of names the proxy removes, and a prefix still matches.
pub fn squeezed_name(name: &[u8]) -> Box<[u8]> {
    name.iter().copied().filter(u8::is_ascii_alphanumeric).take(SQUEEZED_MAX).collect()
}

/// How many letters and digits of a header name [`squeezed_name`] keeps.
pub const SQUEEZED_MAX: usize = 64;

/// Does `s`, folded as [`folded_alphanumerics`] folds it, read `accesstoken`?
fn folds_to_access_token(s: &str) -> bool {
    let mut want = "accesstoken".chars();
    for c in folded_alphanumerics(s) {
        if want.next() != Some(c) {
            return false;
        }
    }
    want.next().is_none()
}

/// The letters and digits of `s` as the loosest readers see them (see
/// [`is_access_token_name`]): `%uXXXX` decoded, NFKC, then each character through lower,
/// upper and lower case (`ẞ` → `ß` → `SS` → `ss`, `ſ` → `S` → `s`, Kelvin sign → `k`).
pub fn folded_alphanumerics(s: &str) -> impl Iterator<Item = char> + '_ {
    use unicode_normalization::UnicodeNormalization;
    percent_u_decoded(s)
        .nfkc()
        .flat_map(char::to_lowercase)
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .filter(|c| c.is_alphanumeric())
}

/// `s` with every `%uXXXX` (IIS and classic ASP.NET's non-standard escape) decoded; other
/// text, invalid escapes included, as it is.
pub fn percent_u_decoded(s: &str) -> impl Iterator<Item = char> + '_ {
    let mut rest = s;
    std::iter::from_fn(move || {
        let mut chars = rest.chars();
        let c = chars.next()?;
        if c == '%'
            && let Some(hex) = rest.get(2..6).filter(|_| rest[1..].starts_with(['u', 'U']))
            && let Some(decoded) = u32::from_str_radix(hex, 16).ok().and_then(char::from_u32)
        {
            rest = &rest[6..];
            return Some(decoded);
        }
        rest = chars.as_str();
        Some(c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_values_are_visible_and_unpadded() {
        for good in ["alice", "a", "Jöhn Doe", "user@example.com", "9f1c-7", "東京", "a\u{00A0}b", "é"] {
            assert_eq!(check(good, MAX_IDENTITY), Ok(()), "{good:?}");
        }
        let x = "x".repeat(MAX_IDENTITY);
        assert!(is_identity(&x) && !is_identity(&format!("{x}y")));
        assert_eq!(check("", 9), Err(Untidy::Empty));
        assert_eq!(check("abc", 2), Err(Untidy::TooLong(2)));
        for padded in [" alice", "alice ", "   ", "\u{00A0}alice", "alice\u{3000}", "\talice", "alice\n", "\u{2028}a"] {
            assert_eq!(check(padded, MAX_IDENTITY), Err(Untidy::Padded), "{padded:?}");
        }
        for hidden in [
            "alice\u{0085}x",
            "al\u{0}ice",
            "al\u{7F}ice",
            "al\u{9B}ice",
            "al\u{200B}ice",
            "al\u{202E}ice",
            "al\u{2066}ice",
            "al\u{FEFF}ice",
            "al\u{00AD}ice",
            "al\u{2028}ice",
            "al\u{2029}ice",
            "al\u{180E}ice",
            "al\u{FE0F}ice",
            "a\u{E0041}b",
            "a\u{E0001}b",
            "a\u{E007F}b",
            "a\u{1D173}b",
        ] {
            assert_eq!(check(hidden, MAX_IDENTITY), Err(Untidy::Invisible), "{hidden:?}");
        }
    }
}
