//! JSON Schema: the payload is the JSON itself, which stages see as is;
//! the schema validates it on the way in and on the way out (`jsonschema`,
//! without its HTTP and file resolvers: references come from the
//! registry).

/// A compiled JSON Schema.
pub struct JsonSchema {
    validator: jsonschema::Validator,
    title: String,
}

impl std::fmt::Debug for JsonSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonSchema")
            .field("title", &self.title)
            .finish()
    }
}

impl JsonSchema {
    /// Compiles schema `text`, with `references` (the URI the schema uses
    /// in `$ref`, text) resolvable.
    pub fn parse(text: &str, references: &[(String, String)]) -> Result<Self, String> {
        let schema: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("the JSON Schema is not JSON: {e}"))?;
        let mut options = jsonschema::options();
        for (uri, text) in references {
            let value: serde_json::Value = serde_json::from_str(text)
                .map_err(|e| format!("referenced schema {uri} is not JSON: {e}"))?;
            let resource = jsonschema::Resource::from_contents(value);
            options = options.with_resource(uri.clone(), resource);
        }
        let validator = options
            .build(&schema)
            .map_err(|e| format!("cannot compile the JSON Schema: {e}"))?;
        let title = schema
            .get("title")
            .and_then(|t| t.as_str())
            .unwrap_or("")
            .to_owned();
        Ok(Self { validator, title })
    }

    /// The schema's `title` (a record-name subject names it).
    pub fn title(&self) -> &str {
        &self.title
    }

    /// Checks that `json` is JSON valid under the schema; the first error
    /// names the place, `$.a.b`.
    pub fn check(&self, json: &[u8]) -> Result<(), String> {
        let value: serde_json::Value =
            serde_json::from_slice(json).map_err(|e| format!("not JSON: {e}"))?;
        match self.validator.iter_errors(&value).next() {
            None => Ok(()),
            Some(e) => {
                let pointer = e.instance_path().to_string();
                let path = if pointer.is_empty() {
                    "$".to_owned()
                } else {
                    format!("${}", pointer.replace('/', "."))
                };
                Err(format!("field {path}: {e}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_and_names_the_field() {
        let s = JsonSchema::parse(
            r#"{"title":"Login","type":"object","properties":{"user":{"type":"object","properties":{"id":{"type":"string"}}}},"required":["user"]}"#,
            &[],
        )
        .unwrap();
        assert_eq!(s.title(), "Login");
        assert!(s.check(br#"{"user":{"id":"a"}}"#).is_ok());
        let e = s.check(br#"{"user":{"id":7}}"#).unwrap_err();
        assert!(e.starts_with("field $.user.id:"), "{e}");
        assert!(s.check(b"{}").unwrap_err().starts_with("field $:"));
    }
}
