//! A YAML node as JSON, for the free-form YAML a policy hands to plugins.
//!
//! A plugin's `config` is arbitrary YAML that the plugin's `init` receives as JSON. serde would
//! type it from the Rust side; here it is taken from the node tree, where a scalar still knows
//! whether it was quoted, so `2` reaches the plugin as a number and `"2"` as a string, as a YAML
//! reader would have it.

use marked_yaml::Node;

/// A YAML node as JSON. Plain scalars are typed like YAML 1.2's core schema (null, booleans,
/// integers, floats); quoted scalars stay strings.
pub(super) fn node_to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value as J;
    match node {
        Node::Scalar(s) => {
            let text = s.as_str();
            if !s.may_coerce() {
                return J::String(text.to_string());
            }
            match text {
                "~" | "null" | "Null" | "NULL" | "" => J::Null,
                "true" | "True" | "TRUE" => J::Bool(true),
                "false" | "False" | "FALSE" => J::Bool(false),
                _ => {
                    if let Ok(i) = text.parse::<i64>() {
                        J::from(i)
                    } else if let Some(f) = text
                        .parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .and_then(serde_json::Number::from_f64)
                    {
                        J::Number(f)
                    } else {
                        J::String(text.to_string())
                    }
                }
            }
        }
        Node::Sequence(seq) => J::Array(seq.iter().map(node_to_json).collect()),
        Node::Mapping(map) => J::Object(
            map.iter()
                .map(|(k, v)| (k.as_str().to_string(), node_to_json(v)))
                .collect(),
        ),
    }
}
