//! JSON values read leniently for the routes file: a value of the wrong type is described by its
//! kind (never its content, which may hold a token) and skipped, so that one structural problem
//! does not hide the others. Only broken JSON syntax stops a read.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// One value read whatever its type: the scalars the file uses are kept, the rest is skipped
/// and named by its kind.
pub(super) enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(u64),
    Null,
    Other(&'static str),
}

impl Scalar<'_> {
    /// The value's kind, for "invalid type: KIND, expected ...".
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "string",
            Scalar::Int(_) => "integer",
            Scalar::Null => "null",
            Scalar::Other(kind) => kind,
        }
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Scalar<'de>, D::Error> {
        d.deserialize_any(Object(ScalarFields(None)))?.0.ok_or_else(|| de::Error::custom("an object"))
    }
}

/// [`Scalar`] through [`Object`]: a map is skipped as the kind `object`.
struct ScalarFields<'a>(Option<Scalar<'a>>);

impl<'de> Fields<'de> for ScalarFields<'de> {
    fn entries<A: MapAccess<'de>>(&mut self, mut map: A) -> Result<(), A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        self.0 = Some(Scalar::Other("object"));
        Ok(())
    }
    fn other(&mut self, value: Scalar<'de>) {
        self.0 = Some(value);
    }
}

/// What an object in the file does with its entries, and with a value that is not an object.
pub(super) trait Fields<'de> {
    /// Reads the object's entries (each value leniently, where it can).
    fn entries<A: MapAccess<'de>>(&mut self, map: A) -> Result<(), A::Error>;
    /// A value of another type (already consumed): record a problem, or accept `null`.
    fn other(&mut self, value: Scalar<'de>);
}

/// Reads an object through its [`Fields`], or hands any other value to [`Fields::other`].
pub(super) struct Object<F>(pub(super) F);

impl<'de, F: Fields<'de>> DeserializeSeed<'de> for Object<F> {
    type Value = F;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<F, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, F: Fields<'de>> Object<F> {
    fn other<E>(mut self, value: Scalar<'de>) -> Result<F, E> {
        self.0.other(value);
        Ok(self.0)
    }
}

impl<'de, F: Fields<'de>> Visitor<'de> for Object<F> {
    type Value = F;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(mut self, map: A) -> Result<F, A::Error> {
        self.0.entries(map)?;
        Ok(self.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<F, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.other(Scalar::Other("array"))
    }
    fn visit_bool<E>(self, _: bool) -> Result<F, E> {
        self.other(Scalar::Other("boolean"))
    }
    fn visit_i64<E>(self, v: i64) -> Result<F, E> {
        match u64::try_from(v) {
            Ok(v) => self.other(Scalar::Int(v)),
            Err(_) => self.other(Scalar::Other("negative integer")),
        }
    }
    fn visit_u64<E>(self, v: u64) -> Result<F, E> {
        self.other(Scalar::Int(v))
    }
    fn visit_f64<E>(self, _: f64) -> Result<F, E> {
        self.other(Scalar::Other("floating point number"))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<F, E> {
        self.other(Scalar::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<F, E> {
        self.other(Scalar::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<F, E> {
        self.other(Scalar::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<F, E> {
        self.other(Scalar::Null)
    }
    fn visit_none<E>(self) -> Result<F, E> {
        self.other(Scalar::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<F, D::Error> {
        d.deserialize_any(self)
    }
}

/// A field or key name in a problem line: between backticks, escaped, cut to 64 characters.
pub(super) struct Name<'a>(pub(super) &'a str);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("`")?;
        for (i, c) in self.0.chars().enumerate() {
            if i == 64 {
                return f.write_str("...`");
            }
            match c {
                c if c.is_control() => write!(f, "\\u{:04x}", u32::from(c))?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("`")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(json: &str) -> &'static str {
        serde_json::from_str::<Scalar>(json).unwrap().kind()
    }

    #[test]
    fn every_json_type_has_a_kind_and_nothing_is_quoted() {
        let cases = [
            ("\"S3CRET\"", "string"),
            ("5", "integer"),
            ("-5", "negative integer"),
            ("1.5", "floating point number"),
            ("true", "boolean"),
            ("null", "null"),
            ("[1, [2], {\"a\": 3}]", "array"),
            ("{\"a\": {\"b\": [1]}}", "object"),
        ];
        for (json, want) in cases {
            assert_eq!(kind(json), want, "{json}");
        }
        assert!(matches!(serde_json::from_str::<Scalar>("\"a\"").unwrap(), Scalar::Str(Cow::Borrowed("a"))));
        assert!(serde_json::from_str::<Scalar>("[1,").is_err(), "broken syntax still stops");
    }

    #[test]
    fn names_are_cut_and_escaped() {
        assert_eq!(Name("retries").to_string(), "`retries`");
        assert_eq!(Name("a\nb").to_string(), "`a\\u000ab`");
        assert_eq!(Name(&"x".repeat(100)).to_string(), format!("`{}...`", "x".repeat(64)));
    }
}
