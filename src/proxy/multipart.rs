//! An `access_token` field in a `multipart/form-data` body (RFC 6750 §2.2 names only the
//! urlencoded form, but frameworks read multipart fields the same way). Such bodies are
//! uploads, often far larger than any form limit, so they are not buffered: the body
//! streams through a scanner, and the chunk that names an `access_token` field is never
//! sent — the request fails there (400), and the upstream sees a body that broke off.
//!
//! The scan fails closed rather than parsing MIME: `name=` or `name*=` (after `;`, a space
//! or a tab, in any case) whose value reads as `access_token` (see
//! [`super::access_token::is_access_token_name`]) anywhere in the body refuses it, also inside
//! a file's contents; so do RFC 2231 continuations (`name*0=`) and RFC 2047 encoded words
//! in a name, which some parsers decode and the scan does not. An unquoted value is judged
//! both as it runs to its `;` and cut at its first non-token character, as Werkzeug and
//! Python's email module read it (`name=access_token(x`). An extended value
//! (`charset'lang'text`) is judged whole, after its last `'` and after its second, where
//! Werkzeug and Python's email module read it (`utf-8'en'access'_token`), also once
//! percent-decoded first, as Python splits it. A name that is not ASCII is read in every
//! way a reader decodes its bytes ([`readings`]): as UTF-8, as Latin-1, and in the charset
//! it declares (`name*=iso-8859-1''%AAccess_token` is `ªccess_token`, which NFKC reads as
//! `access_token`); a declared charset the scan does not know refuses it. A match split
//! across chunks is found: the last bytes of each chunk are scanned again with the next.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use super::access_token::is_access_token_name;
use crate::http::{Body, BoxError};

/// The longest field name looked at; a longer one is judged by its start (PHP's array
/// form `access_token[...]` only needs that).
const MAX_NAME: usize = 256;
/// What is kept of a chunk to be scanned again with the next: `name*=`, spaces, a quote
/// and [`MAX_NAME`] bytes fit.
const CARRY: usize = MAX_NAME + 64;

/// Is the body multipart, as the loosest parser reads a `Content-Type`? Any `multipart/*`
/// (Rack and Commons FileUpload parse `multipart/mixed` and `related` as forms), its media
/// type ended at the first `;`, `,` or blank as PHP ends it (`multipart/form-data,
/// boundary=x`).
pub fn is_multipart_form(headers: &http::HeaderMap) -> bool {
    headers.get_all(http::header::CONTENT_TYPE).iter().any(|v| {
        let v = crate::cookies::trim(v.as_bytes());
        let essence = v.split(|&b| matches!(b, b';' | b',' | b' ' | b'\t')).next().unwrap_or_default();
        essence.len() > 10 && essence[..10].eq_ignore_ascii_case(b"multipart/")
    })
}

/// The error a scanned body fails with; `forward` turns it into a 400.
#[derive(Debug)]
pub struct TokenField;

impl std::fmt::Display for TokenField {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("multipart body names an access_token field")
    }
}

impl std::error::Error for TokenField {}

/// `body`, failing with [`TokenField`] before the chunk that names an `access_token` field.
pub fn scanned(body: Body) -> Body {
    http_body_util::BodyExt::boxed(Scanned { inner: body, carry: Vec::new(), kind: Kind::Multipart })
}

/// `body` without a media type, failing with [`TokenField`] before the chunk that holds an
/// urlencoded `access_token` parameter: Rack reads such a POST body as a form. Streamed
/// and scanned like a multipart body, not buffered: an untyped body may be any upload.
pub fn scanned_untyped(body: Body) -> Body {
    http_body_util::BodyExt::boxed(Scanned { inner: body, carry: Vec::new(), kind: Kind::Untyped })
}

#[derive(Clone, Copy)]
enum Kind {
    /// `name=` parameters of part headers.
    Multipart,
    /// `&`/`;`-separated urlencoded pieces.
    Untyped,
}

struct Scanned {
    inner: Body,
    carry: Vec<u8>,
    kind: Kind,
}

impl Scanned {
    /// Does `window` hold what must not pass? Otherwise, where does the part to scan again
    /// with the next chunk begin: its last [`CARRY`] bytes (a name's start, where its
    /// prefix rules apply, is always judged within them). For urlencoded pieces the cut
    /// moves back to a `%` escape it would split, so no stray hex digits join the name.
    fn scan(&self, window: &[u8]) -> Result<usize, TokenField> {
        let found = match self.kind {
            Kind::Multipart => names_token_field(window),
            // The unfinished last piece is judged too (a name cut at a NUL or `[` is one).
            Kind::Untyped => super::access_token::holds_access_token(window),
        };
        if found {
            return Err(TokenField);
        }
        let from = window.len() - window.len().min(CARRY);
        Ok(match self.kind {
            Kind::Untyped => window[from.saturating_sub(5)..from]
                .iter()
                .rposition(|&b| b == b'%')
                .map_or(from, |p| from.saturating_sub(5) + p),
            Kind::Multipart => from,
        })
    }
}

impl HttpBody for Scanned {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let mut window = std::mem::take(&mut this.carry);
                    window.extend_from_slice(data);
                    match this.scan(&window) {
                        Err(found) => return Poll::Ready(Some(Err(Box::new(found)))),
                        Ok(from) => {
                            window.drain(..from);
                            this.carry = window;
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Does `buf` hold a `name=` / `name*=` parameter whose value reads as `access_token`?
pub fn names_token_field(buf: &[u8]) -> bool {
    let mut at = 0;
    while let Some(found) = find_name(&buf[at..]) {
        let start = at + found;
        at = start + 4;
        if start > 0 && !matches!(buf[start - 1], b';' | b' ' | b'\t') {
            continue;
        }
        let mut i = at;
        let skip_ws = |i: &mut usize| {
            while *i < buf.len() && matches!(buf[*i], b' ' | b'\t') {
                *i += 1;
            }
        };
        skip_ws(&mut i);
        let extended = buf.get(i) == Some(&b'*');
        if extended {
            i += 1;
            skip_ws(&mut i);
            // RFC 2231 continuations (`name*0=`, `name*0*=`) spell a name in pieces that
            // Werkzeug and Python's email module join: judged joined, over their line.
            if buf.get(i).is_some_and(u8::is_ascii_digit) {
                let line = &buf[start..];
                let ends = line.iter().any(|&b| matches!(b, b'\r' | b'\n'));
                if !ends && line.len() <= CARRY {
                    // Cut by the chunk's end: judged whole with the next chunk (the carry
                    // keeps it); the body's last bytes end no header line.
                    continue;
                }
                match joined_continuations(line) {
                    Some((names, end)) if !names.iter().any(|name| is_access_token_name(name)) => {
                        // The line's other pieces are judged with this one.
                        at = start + end;
                        continue;
                    }
                    _ => return true,
                }
            }
        }
        if buf.get(i) != Some(&b'=') {
            continue;
        }
        i += 1;
        // After the `=`, a folded header line too (`name=\r\n "access_token"`: PHP reads
        // it), but not without bound: a run of blanks longer than a header's is refused.
        let blank = buf[i.min(buf.len())..]
            .iter()
            .take(MAX_BLANK + 1)
            .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            .count();
        if blank > MAX_BLANK {
            return true;
        }
        i += blank;
        let quoted = buf.get(i) == Some(&b'"');
        if quoted {
            i += 1;
        }
        let rest = &buf[i.min(buf.len())..];
        // A quoted value ends at its quote, or at the line's end if the quote is never
        // closed (PHP reads `name="access_token` to the end of the line).
        // An extended value (`charset'lang'text`) runs to the `;`: a blank inside its
        // charset (`utf-16 ''...`) is one some decoders ignore.
        let end = rest.iter().take(MAX_NAME).position(|&b| {
            if quoted {
                matches!(b, b'"' | b'\r' | b'\n')
            } else if extended {
                matches!(b, b';' | b'\r' | b'\n')
            } else {
                matches!(b, b';' | b'\r' | b'\n' | b' ' | b'\t')
            }
        });
        let end = match end {
            Some(end) => end,
            // No end within MAX_NAME bytes and more follow: a name too long to judge
            // (PHP drops leading blanks, Rack leading brackets). Refused.
            None if rest.len() > MAX_NAME => return true,
            None => rest.len(),
        };
        let value = &rest[..end];
        // An unquoted value is also read as a run of token characters (Werkzeug, Python's
        // email module: `name=access_token(x`, `name*=utf-8''access_token x`): judged cut
        // there as well.
        if judged_token_name(value, extended)
            || (!quoted && token_cuts(value).iter().any(|&cut| cut != value && judged_token_name(cut, extended)))
        {
            return true;
        }
    }
    false
}

/// The value of an unquoted parameter as token readers end it: cut at the first byte that
/// is not an RFC 2045 token character (visible ASCII but the tspecials `()<>@,;:\"/[]?=`),
/// and at the first that is not an RFC 9110 `tchar` (`{` and `}` too, as Werkzeug's
/// pattern reads); each `value` whole if it has no such byte.
fn token_cuts(value: &[u8]) -> [&[u8]; 2] {
    let rfc2045 = |b: &u8| !b.is_ascii_graphic() || b"()<>@,;:\\\"/[]?=".contains(b);
    let tchar = |b: &u8| rfc2045(b) || matches!(b, b'{' | b'}');
    let cut = |p: Option<usize>| &value[..p.unwrap_or(value.len())];
    [cut(value.iter().position(rfc2045)), cut(value.iter().position(tchar))]
}

/// Does this `name=` (or, `extended`, `name*=`) value read as `access_token`, or can it not
/// be judged (refused)?
fn judged_token_name(value: &[u8], extended: bool) -> bool {
    if !extended {
        return judged_name(&percent_encoding::percent_decode(value).collect::<Vec<u8>>(), &[]);
    }
    // RFC 2231 / 5987: charset'language'percent-encoded, read in every way a reader splits
    // it (see [`extended_readings`]), each in every charset it may be read in. A charset in
    // which ASCII is not itself (Django decodes `utf-16be''%00a%00c...`) cannot be judged
    // here: refused.
    match extended_readings(value) {
        Some((names, charsets)) => {
            let charsets: Vec<&[u8]> = charsets.iter().map(Vec::as_slice).collect();
            names.iter().any(|name| judged_name(name, &charsets))
        }
        None => true,
    }
}

/// Does this percent-decoded name, read in each of its [`readings`] (`charsets`: those it
/// declares), read as `access_token`, or can it not be judged?
fn judged_name(name: &[u8], charsets: &[&[u8]]) -> bool {
    let Some(texts) = readings(name, charsets) else { return true };
    texts.iter().any(|decoded| {
        // RFC 2047 encoded words (`=?UTF-8?B?...?=`), which Commons FileUpload decodes in
        // parameter values, judged decoded; one that cannot be decoded is refused.
        if decoded.contains("=?") {
            match encoded_words_decoded(decoded) {
                Some(texts) => texts.iter().any(|text| is_access_token_name(text)),
                None => true,
            }
        } else {
            is_access_token_name(decoded)
        }
    })
}

/// The texts a reader may decode a name's `bytes` to: UTF-8 (invalid sequences replaced);
/// when they are not all ASCII, also Latin-1 byte for byte (Starlette reads a name that is
/// not UTF-8 so; readers without a charset fall back to it) and each of `charsets` (those
/// it declares: `iso-8859-1''%AAccess_token` is `ªccess_token`, which NFKC folds to
/// `access_token`; Shift_JIS and the EUC and GB charsets have fullwidth letters). `None`
/// (refused) when a declared charset is one the scan cannot decode.
fn readings<'a>(bytes: &'a [u8], charsets: &[&[u8]]) -> Option<Vec<Cow<'a, str>>> {
    let mut texts = vec![String::from_utf8_lossy(bytes)];
    if bytes.is_ascii() {
        return Some(texts);
    }
    texts.push(Cow::Owned(latin1(bytes)));
    for charset in charsets {
        texts.push(Cow::Owned(decoded_in(bytes, charset)?));
    }
    Some(texts)
}

/// `bytes` read as ISO 8859-1, one character a byte.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().copied().map(char::from).collect()
}

/// `bytes` decoded in `charset` (a label as RFC 2231 and 2047 carry it; the empty one read
/// as Windows-1252, which is what a Latin-1 label means to web readers); `None` when the
/// bytes are not ASCII and `encoding_rs` does not know the label (`cp932`, `euc-tw`).
fn decoded_in(bytes: &[u8], charset: &[u8]) -> Option<String> {
    if bytes.is_ascii() {
        return Some(String::from_utf8_lossy(bytes).into_owned());
    }
    let charset = crate::cookies::trim(charset);
    let encoding = match charset.is_empty() {
        true => encoding_rs::WINDOWS_1252,
        false => encoding_rs::Encoding::for_label_no_replacement(charset)?,
    };
    Some(encoding.decode_without_bom_handling(bytes).0.into_owned())
}

/// `value` split at its `'` as RFC 2231 readers split `charset'lang'text`: how many `'` it
/// holds, its charset (the text before the first, all of it when there is none), and the
/// text read as the name — whole, after the second `'` (Werkzeug, Python's email module and
/// Django: the text may hold more, `utf-8'en'access'_token` is `access'_token`; whole when
/// there are fewer than two), and after the last (whole when there is none).
fn split_ticks(value: &[u8]) -> (usize, &[u8], [&[u8]; 3]) {
    let mut ticks = value.iter().enumerate().filter(|&(_, &b)| b == b'\'').map(|(p, _)| p);
    let first = ticks.next();
    let second = ticks.next();
    let count = first.map_or(0, |_| 1) + second.map_or(0, |_| 1) + ticks.count();
    let last = value.iter().rposition(|&b| b == b'\'');
    let after = |p: Option<usize>| p.map_or(value, |p| &value[p + 1..]);
    (count, &value[..first.unwrap_or(value.len())], [value, after(second), after(last)])
}

/// Is `charset` (before an extended value's first `'`) one in which ASCII is itself? The
/// empty one is (readers fall back to ASCII, Latin-1 or UTF-8).
fn ascii_charset(charset: &[u8]) -> bool {
    charset.is_empty() || crate::http::is_ascii_charset(charset)
}

/// Names (percent-decoded bytes) and the charsets they declare.
type NamesAndCharsets = (Vec<Vec<u8>>, Vec<Vec<u8>>);

/// The names an extended value (`charset'lang'text`) is read as, each percent-decoded:
/// whole, after its second `'` and after its last ([`split_ticks`]); and split again after
/// it is percent-decoded, as Python's email module splits it (`utf-8%27%27access_token` is
/// `access_token` there); with the charsets they declare, each name to be read in all of
/// them (see [`readings`]). `None` (refused) when a charset is not ASCII-compatible: the text
/// before the first `'` when there is one, or, decoded, when there are two.
fn extended_readings(value: &[u8]) -> Option<NamesAndCharsets> {
    let mut charsets = Vec::new();
    let (count, charset, raw) = split_ticks(value);
    if count > 0 {
        if !ascii_charset(charset) {
            return None;
        }
        charsets.push(charset.to_vec());
    }
    let mut names: Vec<Vec<u8>> = raw.iter().map(|v| percent_encoding::percent_decode(v).collect()).collect();
    let decoded = names[0].clone();
    let (count, charset, split) = split_ticks(&decoded);
    if count >= 2 {
        if !ascii_charset(charset) {
            return None;
        }
        charsets.push(charset.to_vec());
    }
    names.extend(split[1..].iter().map(|v| v.to_vec()));
    Some((names, charsets))
}

/// The longest run of blanks (and folded line ends) read between `name=` and its value.
const MAX_BLANK: usize = 64;

/// The names an RFC 2231 continuation spells, `line` starting at its first `name*N`: the
/// values of every `name*N=` / `name*N*=` on that line, in the order of `N`, joined, the
/// extended ones percent-decoded — once with each unquoted piece as it runs to its `;`
/// (or blank, unextended), and once with each cut where [`token_cuts`] cuts it (as
/// Werkzeug and Python read a piece: `name*0*=utf-8''acc x; name*1=ess_token`); each of
/// these with every extended piece whole, after its second `'` (Werkzeug reads each piece
/// so) and after its last ([`split_ticks`]), and once more joined first and then split at
/// its `'` as Python's email module splits it (`name*0*=utf-8'en'acc; name*1*=ess'_token`
/// is `access'_token` there); each joined name in all its [`readings`], every charset a
/// piece declares among them (Python's email module decodes the joined bytes in the first
/// piece's: `name*0*=shift_jis''%82; name*1*=%60ccess_token` is `Ａccess_token`); and
/// where the line ends. `None` (refused) when the line does not end within the buffer or
/// [`MAX_NAME`] × 4 bytes, a charset is not ASCII-compatible or cannot be decoded, or a
/// piece is missing.
fn joined_continuations(line: &[u8]) -> Option<(Vec<String>, usize)> {
    /// How a piece is cut: as it runs, and at its first non-token character both ways.
    const CUTS: usize = 3;
    /// How an extended piece is split at its `'`: whole, after the second, after the last.
    const SPLITS: usize = 3;
    let end = line.iter().take(MAX_NAME * 4).position(|&b| matches!(b, b'\r' | b'\n'))?;
    let line = &line[..end];
    /// A piece's readings, by cut and then by split.
    type Readings = [[Vec<u8>; SPLITS]; CUTS];
    let mut pieces: Vec<(u32, bool, Readings)> = Vec::new();
    // The charsets the pieces declare.
    let mut charsets: Vec<Vec<u8>> = Vec::new();
    let mut at = 0;
    while let Some(found) = find_name(&line[at..]) {
        let mut i = at + found + 4;
        at = i;
        if line.get(i) != Some(&b'*') {
            continue;
        }
        i += 1;
        let digits = line[i..].iter().take_while(|b| b.is_ascii_digit()).count();
        let index: u32 = std::str::from_utf8(&line[i..i + digits]).ok()?.parse().ok()?;
        i += digits;
        let encoded = line.get(i) == Some(&b'*');
        if encoded {
            i += 1;
        }
        if line.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        let rest = &line[i..];
        let (value, quoted) = match rest.strip_prefix(b"\"") {
            Some(q) => (&q[..q.iter().position(|&b| b == b'"')?], true),
            None if encoded => (&rest[..rest.iter().position(|&b| b == b';').unwrap_or(rest.len())], false),
            None => (&rest[..rest.iter().position(|&b| matches!(b, b';' | b' ' | b'\t')).unwrap_or(rest.len())], false),
        };
        // The piece as it runs, then its token cuts.
        let cuts = match quoted {
            true => [value; CUTS],
            false => {
                let [rfc2045, tchar] = token_cuts(value);
                [value, rfc2045, tchar]
            }
        };
        let [whole, rfc2045, tchar] = cuts.map(|v| continuation_piece(v, encoded));
        let [whole, rfc2045, tchar] = [whole?, rfc2045?, tchar?];
        charsets.extend(whole.1.into_iter().chain(rfc2045.1).chain(tchar.1));
        pieces.push((index, encoded, [whole.0, rfc2045.0, tchar.0]));
    }
    pieces.sort_by_key(|(n, ..)| *n);
    if pieces.iter().enumerate().any(|(k, (n, ..))| u32::try_from(k).ok() != Some(*n)) {
        return None;
    }
    let extended = pieces.iter().any(|(_, encoded, _)| *encoded);
    let mut joined_names: Vec<Vec<u8>> = Vec::new();
    for cut in 0..CUTS {
        for split in 0..SPLITS {
            joined_names.push(pieces.iter().flat_map(|(.., v)| v[cut][split].iter().copied()).collect());
        }
        if extended {
            // Python's email module: the pieces joined (the extended ones decoded), then
            // split at the first two `'` of the whole.
            let joined: Vec<u8> = pieces.iter().flat_map(|(.., v)| v[cut][0].iter().copied()).collect();
            let (count, charset, split) = split_ticks(&joined);
            if count >= 2 {
                if !ascii_charset(charset) {
                    return None;
                }
                charsets.push(charset.to_vec());
            }
            joined_names.extend(split[1..].iter().map(|v| v.to_vec()));
        }
    }
    charsets.sort();
    charsets.dedup();
    let charsets: Vec<&[u8]> = charsets.iter().map(Vec::as_slice).collect();
    let mut names = Vec::new();
    for joined in &joined_names {
        names.extend(readings(joined, &charsets)?.into_iter().map(Cow::into_owned));
    }
    Some((names, end))
}

/// A continuation piece's three splits, and the charset it declares if any.
type PieceReadings = ([Vec<u8>; 3], Option<Vec<u8>>);

/// One piece of a continuation, as each split reads it (for an extended one, `encoded`:
/// [`split_ticks`], each reading percent-decoded; any other as it is), and the charset it
/// declares if any; `None` when that charset is not ASCII-compatible.
fn continuation_piece(value: &[u8], encoded: bool) -> Option<PieceReadings> {
    if !encoded {
        return Some(([value.to_vec(), value.to_vec(), value.to_vec()], None));
    }
    let (count, charset, split) = split_ticks(value);
    if count > 0 && !ascii_charset(charset) {
        return None;
    }
    Some((split.map(|v| percent_encoding::percent_decode(v).collect()), (count > 0).then(|| charset.to_vec())))
}

/// `text` with its RFC 2047 encoded words (`=?charset?B?base64?=`, `=?charset?Q?text?=`)
/// decoded, three ways: every word's bytes as UTF-8, as Latin-1, and in the charset the
/// word declares (`=?iso-8859-1?Q?=AAccess_token?=` is `ªccess token`); `None` when one is
/// malformed, in a charset that is not ASCII-compatible, or in one that cannot be decoded
/// ([`decoded_in`]).
fn encoded_words_decoded(text: &str) -> Option<[String; 3]> {
    use base64::Engine;
    let mut out = [String::new(), String::new(), String::new()];
    let mut rest = text;
    while let Some(open) = rest.find("=?") {
        for o in &mut out {
            o.push_str(&rest[..open]);
        }
        let word = &rest[open + 2..];
        let (charset, word) = word.split_once('?')?;
        let (coding, word) = word.split_once('?')?;
        let (payload, after) = word.split_once("?=")?;
        let charset = charset.split('*').next().unwrap_or_default();
        if !crate::http::is_ascii_charset(charset.as_bytes()) {
            return None;
        }
        let bytes = if coding.eq_ignore_ascii_case("b") {
            base64::engine::general_purpose::STANDARD.decode(payload).ok()?
        } else if coding.eq_ignore_ascii_case("q") {
            let q = payload.replace('_', " ").replace('=', "%");
            percent_encoding::percent_decode_str(&q).collect()
        } else {
            return None;
        };
        let [utf8, latin, declared] = &mut out;
        utf8.push_str(&String::from_utf8_lossy(&bytes));
        latin.push_str(&latin1(&bytes));
        declared.push_str(&decoded_in(&bytes, charset.as_bytes())?);
        rest = after;
    }
    for o in &mut out {
        o.push_str(rest);
    }
    Some(out)
}

fn find_name(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w.eq_ignore_ascii_case(b"name"))
}

#[cfg(test)]
mod tests {
    use super::names_token_field;

    /// Is a body of these chunks refused by the scan (`untyped`: no media type)?
    async fn refused(untyped: bool, chunks: &[&[u8]]) -> bool {
        use bytes::Bytes;
        use http_body::Frame;
        let frames: Vec<Result<Frame<Bytes>, crate::http::BoxError>> =
            chunks.iter().map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
        let body = http_body_util::BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(frames)));
        let body = if untyped { super::scanned_untyped(body) } else { super::scanned(body) };
        http_body_util::BodyExt::collect(body).await.is_err()
    }

    /// Review, session 26: a name padded past the carry, a NUL-cut name with a long tail,
    /// a name split between chunks; and bodies that must pass.
    #[tokio::test]
    async fn untyped_bodies_are_judged_across_chunks() {
        let pad = format!("a=1&{}", "%5B".repeat(120));
        assert!(refused(true, &[pad.as_bytes(), b"access_token=T"]).await);
        let tail = format!("access_token%00{}", "x".repeat(400));
        assert!(refused(true, &[tail.as_bytes(), b"=T"]).await);
        assert!(refused(true, &[b"a=1&acc", b"ess_tok", b"en=T&b=2"]).await);
        assert!(refused(true, &[b"a=1&access_token=T"]).await);
        let long = "{\"k\": \"v\"}".repeat(2000);
        assert!(!refused(true, &[long.as_bytes(), long.as_bytes()]).await);
        assert!(!refused(true, &[b"a=1&b=access_token", b"&c=my_access_token"]).await);
        let part = "--XyZ\r\nContent-Disposition: form-data; name=\"access_token\"\r\n\r\nT\r\n";
        assert!(refused(false, &[b"--XyZ\r\nContent-Disp", &part.as_bytes()[12..]]).await);
    }

    #[test]
    fn token_fields_in_any_spelling_are_found_and_others_are_not() {
        for part in [
            "Content-Disposition: form-data; name=\"access_token\"\r\n",
            "content-disposition: form-data;name=access_token\r\n",
            "Content-Disposition: form-data; NAME = \"Access.Token\"\r\n",
            "Content-Disposition: form-data; name=\"access_token[]\"\r\n",
            "Content-Disposition: form-data; name*=utf-8''access%5Ftoken\r\n",
            "Content-Disposition: form-data; name=\"access%20token\"\r\n",
            "Content-Disposition: form-data; name=\"access[token\"\r\n",
            // Black-box attack, session 26: continuations, encoded words, NUL, brackets.
            "Content-Disposition: form-data; name*0=\"access\"; name*1=\"_token\"\r\n",
            "Content-Disposition: form-data; name*0*=UTF-8''access%5F; name*1=token\r\n",
            "Content-Disposition: form-data; name=\"=?UTF-8?B?YWNjZXNzX3Rva2Vu?=\"\r\n",
            "Content-Disposition: form-data; name=\"access_token\0\"\r\n",
            "Content-Disposition: form-data; name=\"[access_token]\"\r\n",
            "Content-Disposition: form-data; name=\"access_token]\"\r\n",
            // Second attack: an unclosed quote, a fold after `=`, a name in UTF-16 or EBCDIC.
            "Content-Disposition: form-data; name=\"access_token\r\n\r\nSECRET",
            "Content-Disposition: form-data; name=\r\n \"access_token\"\r\n",
            "Content-Disposition: form-data; name*=utf-16be''%00a%00c%00c%00e%00s%00s\r\n",
            "Content-Disposition: form-data; name*=cp037''%81%83%83\r\n",
            // Review: a name past the bound, a run of blanks, continuations joined, a Q word.
            &format!("Content-Disposition: form-data; name=\"{}access_token\"\r\n", " ".repeat(300)),
            &format!("Content-Disposition: form-data; name={}\"access_token\"\r\n", " ".repeat(100)),
            "Content-Disposition: form-data; name*1=\"_token\"; name*0=\"access\"\r\n",
            "Content-Disposition: form-data; name*0=\"acc\"; name*2=\"ken\"\r\n",
            "Content-Disposition: form-data; name=\"=?UTF-8?Q?access=5Ftoken?=\"\r\n",
            "Content-Disposition: form-data; name=\"=?UTF-16?B?AGEAYw==?=\"\r\n",
            // Third attack: a blank in the charset of an extended name.
            "Content-Disposition: form-data; name*=utf-16be ''%00a%00c\r\n",
            "Content-Disposition: form-data; name*=utf-8 ''access_token\r\n",
            "Content-Disposition: form-data; name*=utf 16''%00a\r\n",
            // Review: an unquoted value read as a run of token characters (Werkzeug, Python).
            "Content-Disposition: form-data; name*=utf-8''access_token x\r\n",
            "Content-Disposition: form-data; name*=utf-8''access%5Ftoken\tx\r\n",
            "Content-Disposition: form-data; name*=utf-8''access_token(x)\r\n",
            "Content-Disposition: form-data; name*=UTF-8'en'access_token/x\r\n",
            "Content-Disposition: form-data; name=access_token(x\r\n",
            "Content-Disposition: form-data; name=access_token,x\r\n",
            "Content-Disposition: form-data; name=access_token\"x\r\n",
            "Content-Disposition: form-data; name=access_token@x\r\n",
            "Content-Disposition: form-data; name=access_token/x\r\n",
            "Content-Disposition: form-data; name=access_token:x\r\n",
            "Content-Disposition: form-data; name=access_token<x>\r\n",
            "Content-Disposition: form-data; name=access_token=x\r\n",
            "Content-Disposition: form-data; name=access_token?x\r\n",
            "Content-Disposition: form-data; name=access_token\\x\r\n",
            "Content-Disposition: form-data; name=access_token{x}\r\n",
            "Content-Disposition: form-data; name=access%5Ftoken(x\r\n",
            "Content-Disposition: form-data; name=access_token\u{e9}\r\n",
            // Review: continuations whose pieces are read as runs of token characters.
            "Content-Disposition: form-data; name*0*=utf-8''acc x; name*1=ess_token\r\n",
            "Content-Disposition: form-data; name*0=acc(x; name*1=ess_token\r\n",
            "Content-Disposition: form-data; name*0=access; name*1*=utf-8''_token,x\r\n",
            "Content-Disposition: form-data; name*0*=utf-8''acc x; name*1*=ess_token{x}\r\n",
            // Review: an extended value read after its second `'` (Werkzeug, Python's email
            // module, Django), whole when it holds fewer than two, split after it is
            // percent-decoded (Python); continuations so read, piece by piece or joined.
            "Content-Disposition: form-data; name*=utf-8'en'access'_token\r\n",
            "Content-Disposition: form-data; name*=utf-8''access'_token\r\n",
            "Content-Disposition: form-data; name*=UTF-8'en'access'_token x\r\n",
            "Content-Disposition: form-data; name*=utf-8'en'access'%5Ftoken\r\n",
            "Content-Disposition: form-data; name*=utf-8%27%27access_token\r\n",
            "Content-Disposition: form-data; name*=utf-16be%27%27%00a%00c\r\n",
            "Content-Disposition: form-data; name*0*=utf-8'en'access'; name*1*=_token\r\n",
            "Content-Disposition: form-data; name*0*=utf-8'en'access'_tok; name*1*=en\r\n",
            "Content-Disposition: form-data; name*0*=utf-8%27%27acc; name*1*=ess_token\r\n",
            "Content-Disposition: form-data; name*0*=utf-16be%27%27; name*1*=%00a\r\n",
            "Content-Disposition: form-data; name*0*=utf-8''%EF%BD; name*1*=%81ccess_token\r\n",
            // Read whole (fewer than two `'`) or by a later `'`: refused for their charset too.
            "Content-Disposition: form-data; name*=access'_token\r\n",
            "Content-Disposition: form-data; name*=access_token'\r\n",
            "Content-Disposition: form-data; name*=utf-16be'en'x'y\r\n",
            "Content-Disposition: form-data; name*0*=utf-8'en'acc; name*1*=ess'_token\r\n",
            // A name read in the charset it declares, not as UTF-8: ª (Latin-1) and fullwidth
            // letters (Shift_JIS, EUC-JP, GBK, GB2312, Big5) fold to `access_token`; bytes
            // without a charset read as Latin-1; in continuations and encoded words too.
            "Content-Disposition: form-data; name*=iso-8859-1''%AAccess_token\r\n",
            "Content-Disposition: form-data; name*=windows-1252''%AAccess_token\r\n",
            "Content-Disposition: form-data; name*=shift_jis''%82%60ccess_token\r\n",
            "Content-Disposition: form-data; name*=sjis'ja'%82%60ccess_token\r\n",
            "Content-Disposition: form-data; name*=euc-jp''%A3%E1ccess_token\r\n",
            "Content-Disposition: form-data; name*=gbk''%A3%E1ccess_token\r\n",
            "Content-Disposition: form-data; name*=gb2312''acc%A3%E5ss_token\r\n",
            "Content-Disposition: form-data; name*=big5''%A2%CFccess_token\r\n",
            "Content-Disposition: form-data; name*=shift_jis%27%27%82%60ccess_token\r\n",
            "Content-Disposition: form-data; name*=''%AAccess_token\r\n",
            "Content-Disposition: form-data; name*=%AAccess_token\r\n",
            "Content-Disposition: form-data; name=\"%AAccess_token\"\r\n",
            "Content-Disposition: form-data; name*0*=shift_jis''%82; name*1*=%60ccess_token\r\n",
            "Content-Disposition: form-data; name*0*=euc-jp''%A3%E1cc; name*1=ess_token\r\n",
            "Content-Disposition: form-data; name=\"=?iso-8859-1?Q?=AAccess_token?=\"\r\n",
            "Content-Disposition: form-data; name=\"=?shift_jis?B?gmBjY2Vzc190b2tlbg==?=\"\r\n",
            // A charset the scan cannot decode, with bytes that are not ASCII: refused.
            "Content-Disposition: form-data; name*=cp932''%82%60ccess_token\r\n",
            "Content-Disposition: form-data; name*=iso-8859-12''caf%E9\r\n",
            "Content-Disposition: form-data; name*0*=euc-tw''caf; name*1*=%E9\r\n",
            "Content-Disposition: form-data; name=\"=?cp932?Q?caf=E9?=\"\r\n",
        ] {
            assert!(names_token_field(part.as_bytes()), "{part}");
        }
        for part in [
            "Content-Disposition: form-data; name=\"a\"; filename=\"access_token\"\r\n",
            "Content-Disposition: form-data; name=\"access_tokens\"\r\n",
            "Content-Disposition: form-data; name=\"my_access_token\"\r\n",
            "access_token=SECRET",
            "username=access_token",
            "Content-Disposition: form-data; name*=utf-8''file\r\n",
            // An e-mail inside an upload: continuations and encoded words of other names.
            "Content-Type: application/pdf; name*0*=UTF-8''R%C3%A9sum; name*1*=%C3%A9.pdf\r\n",
            "Content-Type: application/pdf; name=\"=?UTF-8?B?UsOpc3Vtw6kucGRm?=\"\r\n",
            "Content-Type: text/plain; name=\"=?iso-8859-1?Q?caf=E9.txt?=\"\r\n",
            // Ordinary uploads: token-cut names that are not access_token.
            "Content-Disposition: form-data; name=file; filename=\"x(1).txt\"\r\n",
            "Content-Disposition: form-data; name*=utf-8''caf%C3%A9\r\n",
            "Content-Disposition: form-data; name=\"field\"\r\n",
            "Content-Disposition: form-data; name=\"access_token(x\"\r\n",
            "Content-Disposition: form-data; name=access_tokens(x\r\n",
            "Content-Disposition: form-data; name=my(access_token\r\n",
            "Content-Disposition: form-data; name*=utf-8''file%20name(1).txt\r\n",
            "Content-Type: application/pdf; name*0*=UTF-8''R%C3%A9sum(1); name*1*=%C3%A9.pdf\r\n",
            "Content-Disposition: form-data; name*0=\"acc(x\"; name*1=\"ess_token\"\r\n",
            // Ordinary extended names, with a language, an escaped or a literal `'`.
            "Content-Disposition: form-data; name*=utf-8'en'file\r\n",
            "Content-Disposition: form-data; name*=utf-8''l%27%C3%A9t%C3%A9\r\n",
            "Content-Disposition: form-data; name*=utf-8'en'o'brien\r\n",
            "Content-Disposition: form-data; name*=o%27brien\r\n",
            "Content-Type: application/pdf; name*0*=UTF-8'en'R%C3%A9sum; name*1*=%C3%A9.pdf\r\n",
            "Content-Type: application/pdf; name*0*=UTF-8''l%27%C3%A9t; name*1*=%C3%A9.pdf\r\n",
            // Ordinary names in legacy charsets (™ is `TM`, which folds to no access token),
            // and an ASCII name under a label the scan cannot decode.
            "Content-Disposition: form-data; name*=iso-8859-1''caf%E9\r\n",
            "Content-Disposition: form-data; name*=windows-1252''access_%99oken\r\n",
            "Content-Disposition: form-data; name*=shift_jis''%93%FA%96%7B\r\n",
            "Content-Disposition: form-data; name*=koi8-r''%C6%C1%CA%CC\r\n",
            "Content-Disposition: form-data; name*=cp932''file\r\n",
            "Content-Type: application/pdf; name*0*=iso-8859-1''R%E9sum; name*1*=%E9.pdf\r\n",
            "Content-Type: text/plain; name=\"=?shift_jis?B?k/qWew==?=\"\r\n",
        ] {
            assert!(!names_token_field(part.as_bytes()), "{part}");
        }
    }
}
