//! Twilio's side of a voice webhook: the strict form parser and the call parameters it yields.
//! No I/O here but what the caller already read.

use std::borrow::Cow;

/// Why a form body or query string is not valid `application/x-www-form-urlencoded`.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormError {
    #[error("bad percent-escape at byte {0}")]
    BadEscape(usize),
    #[error("a name or value is not valid UTF-8")]
    InvalidUtf8,
}

/// Decoded form parameters, in the order received.
pub type Params<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// Parses `application/x-www-form-urlencoded` strictly: `+` is a space, every `%` must start a
/// two-hex-digit escape, and every decoded name and value must be UTF-8. Empty pieces between
/// `&`s are skipped; a piece without `=` is a name with an empty value.
pub fn parse_form(input: &[u8]) -> Result<Params<'_>, FormError> {
    let mut params = Vec::with_capacity(24);
    let mut offset = 0;
    for piece in input.split(|&b| b == b'&') {
        let start = offset;
        offset += piece.len() + 1;
        if piece.is_empty() {
            continue;
        }
        let (name, value) = match piece.iter().position(|&b| b == b'=') {
            Some(eq) => (&piece[..eq], &piece[eq + 1..]),
            None => (piece, &piece[piece.len()..]),
        };
        let value_start = start + name.len() + 1;
        params.push((decode(name, start)?, decode(value, value_start)?));
    }
    Ok(params)
}

/// Decodes one name or value; `at` is its offset in the whole input, for error messages.
fn decode(raw: &[u8], at: usize) -> Result<Cow<'_, str>, FormError> {
    let mut needs_decoding = false;
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hex = raw.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return Err(FormError::BadEscape(at + i));
                }
                needs_decoding = true;
                i += 3;
            }
            b'+' => {
                needs_decoding = true;
                i += 1;
            }
            _ => i += 1,
        }
    }
    if !needs_decoding {
        return std::str::from_utf8(raw).map(Cow::Borrowed).map_err(|_| FormError::InvalidUtf8);
    }
    // One pass, one allocation: escapes were checked above.
    let mut bytes = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let hex = std::str::from_utf8(&raw[i + 1..i + 3]).expect("checked: two hex digits");
                bytes.push(u8::from_str_radix(hex, 16).expect("checked: two hex digits"));
                i += 3;
            }
            b'+' => {
                bytes.push(b' ');
                i += 1;
            }
            b => {
                bytes.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(bytes).map(Cow::Owned).map_err(|_| FormError::InvalidUtf8)
}

/// The parameters of a voice webhook that callgate acts on.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CallParams<'a> {
    pub to: Option<&'a str>,
    pub from: Option<&'a str>,
    pub call_sid: Option<&'a str>,
    pub direction: Option<&'a str>,
    pub call_status: Option<&'a str>,
}

impl<'a> CallParams<'a> {
    /// Picks the call parameters out of decoded form parameters (the first of a repeated name).
    pub fn from_params(params: &'a Params<'_>) -> CallParams<'a> {
        let mut call = CallParams::default();
        for (name, value) in params {
            let slot = match name.as_ref() {
                "To" => &mut call.to,
                "From" => &mut call.from,
                "CallSid" => &mut call.call_sid,
                "Direction" => &mut call.direction,
                "CallStatus" => &mut call.call_status,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.as_ref());
            }
        }
        call
    }

    /// An inbound call that is still ringing: the only webhook that is gated.
    pub fn is_inbound_ringing(&self) -> bool {
        self.direction == Some("inbound") && self.call_status == Some("ringing")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_plus_and_escapes() {
        let params = parse_form(b"To=%2B447700900123&Caller=+44+77&Empty=&Bare&&x=%E2%9C%93").unwrap();
        let flat: Vec<(&str, &str)> = params.iter().map(|(n, v)| (n.as_ref(), v.as_ref())).collect();
        assert_eq!(
            flat,
            [("To", "+447700900123"), ("Caller", " 44 77"), ("Empty", ""), ("Bare", ""), ("x", "✓")]
        );
    }

    #[test]
    fn rejects_bad_escapes_and_invalid_utf8() {
        assert_eq!(parse_form(b"a=%zz"), Err(FormError::BadEscape(2)));
        assert_eq!(parse_form(b"a=1&b=%4"), Err(FormError::BadEscape(6)));
        assert_eq!(parse_form(b"a=%"), Err(FormError::BadEscape(2)));
        assert_eq!(parse_form(b"a=%FF"), Err(FormError::InvalidUtf8));
        assert_eq!(parse_form(b"a=\xff"), Err(FormError::InvalidUtf8));
        assert_eq!(parse_form(b"%C3=1"), Err(FormError::InvalidUtf8));
    }

    #[test]
    fn call_params_take_the_first_of_a_repeated_name() {
        let params = parse_form(
            b"Direction=inbound&CallStatus=ringing&To=%2B15005550006&To=%2B1999&From=%2B1555&CallSid=CA1",
        )
        .unwrap();
        let call = CallParams::from_params(&params);
        assert!(call.is_inbound_ringing());
        assert_eq!(call.to, Some("+15005550006"));
        assert_eq!(call.from, Some("+1555"));
        assert_eq!(call.call_sid, Some("CA1"));
    }

    #[test]
    fn only_inbound_ringing_is_gated() {
        for (body, gated) in [
            (&b"Direction=inbound&CallStatus=ringing"[..], true),
            (b"Direction=inbound&CallStatus=in-progress", false),
            (b"Direction=outbound-api&CallStatus=ringing", false),
            (b"Direction=Inbound&CallStatus=ringing", false),
            (b"CallStatus=ringing", false),
        ] {
            let params = parse_form(body).unwrap();
            assert_eq!(CallParams::from_params(&params).is_inbound_ringing(), gated);
        }
    }
}
