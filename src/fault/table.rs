//! Owns reading one `[[fault]]` table: the keys every fault takes are taken out by name, and the
//! rest is deserialised into the table of the fault's kind (each kind's module owns its table), so
//! every error keeps the exact line and column of the key or value it is about.

use std::ops::Range;

use serde::de::{self, Deserialize, DeserializeOwned, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::check::FieldError;

/// A fault table that could not be read or validated: what is wrong, and where.
#[derive(Debug)]
pub(crate) struct Invalid {
    pub(crate) span: Range<usize>,
    pub(crate) message: String,
}

/// One `[[fault]]` table of an experiment, with the position of every key.
pub(crate) struct FaultTable<'i> {
    span: Range<usize>,
    entries: DeTable<'i>,
    /// Key spans, kept after the entries are consumed, to point a bound at its key.
    keys: Vec<(String, Range<usize>)>,
}

impl<'i> FaultTable<'i> {
    /// `value` is one element of the `fault` array; anything but a table is refused.
    pub(crate) fn new(value: Spanned<DeValue<'i>>) -> Result<FaultTable<'i>, Invalid> {
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(entries) => {
                let keys = entries
                    .iter()
                    .map(|(k, _)| (k.get_ref().to_string(), k.span()))
                    .collect();
                Ok(FaultTable {
                    span,
                    entries,
                    keys,
                })
            }
            _ => Err(Invalid {
                span,
                message: "`fault` must be tables: write each as `[[fault]]`".to_owned(),
            }),
        }
    }

    /// The span of the whole table (its header, for an array-of-tables entry).
    pub(crate) fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// Where `key` is written in this table, or the table itself when it is not.
    pub(crate) fn key_span(&self, key: &str) -> Range<usize> {
        self.keys
            .iter()
            .find(|(k, _)| k == key)
            .map_or_else(|| self.span.clone(), |(_, s)| s.clone())
    }

    /// Takes `key` out of the table and deserialises it, if it is there.
    pub(crate) fn take<T: DeserializeOwned>(&mut self, key: &str) -> Result<Option<T>, Invalid> {
        let Some(value) = self.entries.remove(key) else {
            return Ok(None);
        };
        let span = value.span();
        T::deserialize(ValueDeserializer::from(value))
            .map(Some)
            .map_err(|e| Invalid {
                span: e.span().unwrap_or(span),
                message: format!("`{key}`: {}", e.message().trim()),
            })
    }

    /// Takes `key` out of the table; its absence is an error.
    pub(crate) fn require<T: DeserializeOwned>(&mut self, key: &str) -> Result<T, Invalid> {
        self.take(key)?.ok_or_else(|| Invalid {
            span: self.span.clone(),
            message: format!("missing field `{key}`"),
        })
    }

    /// Deserialises what is left into the table of kind `kind`. A key the kind does not take is
    /// named as such (`` `fill_to` does not apply to kind `process-kill` ``) and pointed at.
    pub(crate) fn read<T: DeserializeOwned>(&mut self, kind: &str) -> Result<T, Invalid> {
        let known = fields::<T>();
        for (key, _) in &self.entries {
            let key = key.get_ref().as_ref();
            if !known.contains(&key) {
                // The keys every fault takes were taken out before: a typo of one is a typo too.
                let common = ["name", "kind", "on", "at", "duration"];
                let hint = crate::experiment::closest(key, known.iter().copied().chain(common))
                    .map_or_else(String::new, |k| format!("; did you mean `{k}`?"));
                return Err(Invalid {
                    span: self.key_span(key),
                    message: format!("`{key}` does not apply to kind `{kind}`{hint}"),
                });
            }
        }
        let span = self.span.clone();
        let rest = Spanned::new(
            span.clone(),
            DeValue::Table(std::mem::take(&mut self.entries)),
        );
        T::deserialize(ValueDeserializer::from(rest)).map_err(|e| Invalid {
            span: e.span().unwrap_or(span),
            message: e.message().trim().to_owned(),
        })
    }

    /// Turns a kind's refusal into an error at the key it names.
    pub(crate) fn at_key(&self, e: &FieldError) -> Invalid {
        Invalid {
            span: self.key_span(e.field),
            message: e.message.clone(),
        }
    }
}

/// The field names a struct deserialises, asked of serde itself so a kind's table is the only
/// list of its keys.
fn fields<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut found: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldNames(&mut found));
    found
}

/// A deserializer that only records the fields of the struct asked for, then stops.
struct FieldNames<'a>(&'a mut &'static [&'static str]);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field names recorded")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for FieldNames<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "only its field names are read")]
    struct Two {
        one: u32,
        #[serde(rename = "match")]
        two: Option<u32>,
    }

    #[test]
    fn a_tables_keys_are_read_from_its_serde_derive() {
        assert_eq!(super::fields::<Two>(), ["one", "match"]);
    }
}
