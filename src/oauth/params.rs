//! Token request bodies: `application/x-www-form-urlencoded` (RFC 6749) or
//! `application/json`, both flattened to one map where a repeated parameter is an error.

use std::collections::HashMap;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};

use super::error::{BadRequest, OAuthError};

/// Request parameters; empty values count as absent (RFC 6749 §3.1).
#[derive(Debug, Default)]
pub struct Params {
    map: HashMap<String, String>,
}

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str).filter(|v| !v.is_empty())
    }

    /// The value as sent, an empty one included: for the parameter whose empty form is
    /// itself an error rather than an omission (`resource`, RFC 8707 §2: an absolute URI).
    pub fn get_even_empty(&self, name: &str) -> Option<&str> {
        self.map.get(name).map(String::as_str)
    }

    /// The value of a required parameter, or the error that names it.
    pub fn require(&self, name: &'static str) -> Result<&str, OAuthError> {
        self.get(name).ok_or(OAuthError::InvalidRequest(BadRequest::Missing(name)))
    }

    fn insert(&mut self, name: String, value: String) -> Result<(), OAuthError> {
        if self.map.contains_key(&name) {
            return Err(BadRequest::Repeated(name).into());
        }
        self.map.insert(name, value);
        Ok(())
    }

    pub fn from_form(body: &[u8]) -> Result<Params, OAuthError> {
        let mut p = Params::default();
        for (k, v) in form_urlencoded::parse(body) {
            p.insert(k.into_owned(), v.into_owned())?;
        }
        Ok(p)
    }

    pub fn from_json(body: &[u8]) -> Result<Params, OAuthError> {
        let not_an_object = |_| OAuthError::InvalidRequest(BadRequest::NotJsonObject);
        let mut de = serde_json::Deserializer::from_slice(body);
        let pairs = de.deserialize_map(PairsVisitor).map_err(not_an_object)?;
        de.end().map_err(not_an_object)?;
        let mut p = Params::default();
        for (key, value) in pairs {
            let value = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                serde_json::Value::Null => String::new(),
                _ => return Err(BadRequest::Invalid(key).into()),
            };
            p.insert(key, value)?;
        }
        Ok(p)
    }
}

/// A JSON object as its members in order, duplicates kept (serde_json's own map would
/// silently keep the last one; a repeated parameter must be refused instead).
struct PairsVisitor;

impl<'de> Visitor<'de> for PairsVisitor {
    type Value = Vec<(String, serde_json::Value)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of parameters")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
        let mut pairs = Vec::new();
        while let Some(key) = access.next_key::<String>()? {
            pairs.push((key, access.next_value()?));
        }
        Ok(pairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_repeated_parameter_is_refused() {
        let e = Params::from_form(b"grant_type=a&grant_type=b").unwrap_err();
        assert_eq!(e, OAuthError::InvalidRequest(BadRequest::Repeated("grant_type".into())));
    }

    #[test]
    fn json_repeated_parameter_is_refused() {
        let e = Params::from_json(br#"{"scope":"a","scope":"b"}"#).unwrap_err();
        assert_eq!(e, OAuthError::InvalidRequest(BadRequest::Repeated("scope".into())));
    }

    #[test]
    fn json_numbers_become_strings_and_nesting_is_refused() {
        let p = Params::from_json(br#"{"client_id":42,"grant_type":"client_credentials"}"#).unwrap();
        assert_eq!(p.get("client_id"), Some("42"));
        let not_an_object = Err(OAuthError::InvalidRequest(BadRequest::NotJsonObject));
        assert_eq!(Params::from_json(br#"{"scope":["a"]}"#).err(), Some(BadRequest::Invalid("scope".into()).into()));
        assert_eq!(Params::from_json(b"[1,2]").map(|_| ()), not_an_object);
        assert_eq!(Params::from_json(b"{} trailing").map(|_| ()), not_an_object);
    }

    #[test]
    fn empty_values_count_as_absent() {
        let p = Params::from_form(b"scope=&grant_type=x").unwrap();
        assert_eq!(p.get("scope"), None);
        assert_eq!(p.get("grant_type"), Some("x"));
        assert_eq!(p.require("scope"), Err(BadRequest::Missing("scope").into()));
    }
}
