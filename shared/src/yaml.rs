//! A bounded YAML loader that keeps line numbers: hostile input (alias bombs, deep nesting, huge documents) fails fast.
//!
//! Built on yaml-rust2's pull parser, so limits are checked while events arrive, before the rest of the input is read.
//! Scalars keep their source text and whether they were plain (unquoted); typing is left to the caller, which knows
//! whether a key wants a string (`python_version: 3.10` stays "3.10") or a number.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::TScalarStyle;

/// Limits that keep parsing cheap whatever the input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting of sequences and mappings.
    pub max_depth: usize,
    /// Most nodes in the document, counting every node an alias expands to.
    pub max_nodes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_depth: 32,
            max_nodes: 20_000,
        }
    }
}

/// A YAML node with the (1-based) line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub line: usize,
    pub value: Value,
}

/// What a node holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar with its source text; `plain` is false when it was quoted, a block scalar or tagged `!!str`.
    Scalar {
        text: String,
        plain: bool,
    },
    Sequence(Vec<Node>),
    /// Entries in document order; duplicate keys are reported by the loader, so keys are unique here.
    Mapping(Vec<(Node, Node)>),
}

/// Why a document could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LoadError {
    pub line: usize,
    /// The mapping key the problem is about, where there is one (a duplicate key).
    pub key: Option<String>,
    pub message: String,
}

impl Node {
    /// The scalar's text when it is a plain or quoted scalar.
    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// True for a plain `null`, `~` or empty scalar.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    /// A short name for the node's kind, for error messages.
    pub fn kind_name(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } if self.is_null() => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a mapping",
        }
    }

    fn size(&self) -> usize {
        match &self.value {
            Value::Scalar { .. } => 1,
            Value::Sequence(items) => 1 + items.iter().map(Node::size).sum::<usize>(),
            Value::Mapping(entries) => {
                1 + entries
                    .iter()
                    .map(|(k, v)| k.size() + v.size())
                    .sum::<usize>()
            }
        }
    }
}

/// Loads one YAML document. `first_line` is the line number of the text's first line in its file.
/// Returns `None` for an empty document.
pub fn load(text: &str, first_line: usize, limits: Limits) -> Result<Option<Node>, LoadError> {
    Loader {
        limits,
        first_line,
        stack: Vec::new(),
        anchors: HashMap::new(),
        n_nodes: 0,
    }
    .run(text)
}

enum Open {
    Sequence {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Mapping {
        line: usize,
        anchor: usize,
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

struct Loader {
    limits: Limits,
    first_line: usize,
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    n_nodes: usize,
}

impl Loader {
    fn run(mut self, text: &str) -> Result<Option<Node>, LoadError> {
        let mut parser = Parser::new_from_str(text);
        let mut root: Option<Node> = None;
        let mut n_documents = 0;
        loop {
            let (event, mark) = parser.next_token().map_err(|e| LoadError {
                line: self.line(e.marker().line()),
                key: None,
                message: if e.info().contains("recursion limit") {
                    format!(
                        "nesting deeper than {} levels is not allowed",
                        self.limits.max_depth
                    )
                } else {
                    format!("invalid YAML: {}", e.info())
                },
            })?;
            let line = self.line(mark.line());
            match event {
                Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
                Event::StreamEnd => return Ok(root),
                Event::DocumentStart => {
                    n_documents += 1;
                    if n_documents > 1 {
                        return Err(LoadError {
                            line,
                            key: None,
                            message: "more than one YAML document in the front matter".into(),
                        });
                    }
                }
                Event::Alias(id) => {
                    let node = self.anchors.get(&id).cloned().ok_or_else(|| LoadError {
                        line,
                        key: None,
                        message: "alias refers to an unknown anchor".into(),
                    })?;
                    self.count(node.size(), line, "aliases expand")?;
                    if let Some(done) = self.push(Node { line, ..node }, line)? {
                        root = Some(done);
                    }
                }
                Event::Scalar(text, style, anchor, tag) => {
                    self.count(1, line, "the document has")?;
                    let plain = style == TScalarStyle::Plain;
                    let plain = match tag {
                        None => plain,
                        Some(tag) if tag.handle == "!!" || tag.handle == "tag:yaml.org,2002:" => {
                            match tag.suffix.as_str() {
                                "str" => false,
                                "int" | "bool" | "float" | "null" => plain,
                                other => return Err(unsupported_tag(line, other)),
                            }
                        }
                        Some(tag) => return Err(unsupported_tag(line, &tag.suffix)),
                    };
                    let node = Node {
                        line,
                        value: Value::Scalar { text, plain },
                    };
                    self.remember(anchor, &node);
                    if let Some(done) = self.push(node, line)? {
                        root = Some(done);
                    }
                }
                Event::SequenceStart(anchor, ref tag) | Event::MappingStart(anchor, ref tag) => {
                    if let Some(tag) = tag
                        && (tag.handle != "!!" || !matches!(tag.suffix.as_str(), "seq" | "map"))
                    {
                        return Err(unsupported_tag(line, &tag.suffix));
                    }
                    self.count(1, line, "the document has")?;
                    if self.stack.len() >= self.limits.max_depth {
                        return Err(LoadError {
                            line,
                            key: None,
                            message: format!(
                                "nesting deeper than {} levels is not allowed",
                                self.limits.max_depth
                            ),
                        });
                    }
                    let is_seq = matches!(event, Event::SequenceStart(..));
                    self.stack.push(if is_seq {
                        Open::Sequence {
                            line,
                            anchor,
                            items: Vec::new(),
                        }
                    } else {
                        Open::Mapping {
                            line,
                            anchor,
                            entries: Vec::new(),
                            key: None,
                        }
                    });
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let (node, anchor) = match self.stack.pop() {
                        Some(Open::Sequence {
                            line,
                            anchor,
                            items,
                        }) => (
                            Node {
                                line,
                                value: Value::Sequence(items),
                            },
                            anchor,
                        ),
                        Some(Open::Mapping {
                            line,
                            anchor,
                            entries,
                            ..
                        }) => (
                            Node {
                                line,
                                value: Value::Mapping(entries),
                            },
                            anchor,
                        ),
                        None => {
                            return Err(LoadError {
                                line,
                                key: None,
                                message: "unbalanced YAML events".into(),
                            });
                        }
                    };
                    self.remember(anchor, &node);
                    if let Some(done) = self.push(node, line)? {
                        root = Some(done);
                    }
                }
            }
        }
    }

    fn line(&self, yaml_line: usize) -> usize {
        self.first_line + yaml_line.saturating_sub(1)
    }

    fn count(&mut self, n: usize, line: usize, what: &str) -> Result<(), LoadError> {
        self.n_nodes = self.n_nodes.saturating_add(n);
        if self.n_nodes > self.limits.max_nodes {
            return Err(LoadError {
                line,
                key: None,
                message: format!(
                    "{what} more than {} nodes (an alias bomb or an oversized document)",
                    self.limits.max_nodes
                ),
            });
        }
        Ok(())
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }

    /// Adds a finished node to its parent; returns it when it is the document root.
    fn push(&mut self, node: Node, line: usize) -> Result<Option<Node>, LoadError> {
        match self.stack.last_mut() {
            None => Ok(Some(node)),
            Some(Open::Sequence { items, .. }) => {
                items.push(node);
                Ok(None)
            }
            Some(Open::Mapping { entries, key, .. }) => {
                match key.take() {
                    None => {
                        if !matches!(node.value, Value::Scalar { .. }) {
                            return Err(LoadError {
                                line,
                                key: None,
                                message: "mapping keys must be scalars".into(),
                            });
                        }
                        if let Some((first, _)) = entries
                            .iter()
                            .find(|(k, _)| k.as_scalar() == node.as_scalar())
                        {
                            return Err(LoadError {
                                line: node.line,
                                key: node.as_scalar().map(str::to_owned),
                                message: format!(
                                    "duplicate key `{}` (first defined on line {})",
                                    node.as_scalar().unwrap_or_default(),
                                    first.line
                                ),
                            });
                        }
                        *key = Some(node);
                    }
                    Some(k) => entries.push((k, node)),
                }
                Ok(None)
            }
        }
    }
}

fn unsupported_tag(line: usize, tag: &str) -> LoadError {
    LoadError {
        line,
        key: None,
        message: format!("YAML tag `{tag}` is not supported"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load1(text: &str) -> Result<Option<Node>, LoadError> {
        load(text, 1, Limits::default())
    }

    #[test]
    fn keeps_lines_and_plain_text() {
        let root = load1("a: 3.10\nb:\n  - 'x'\n  - y\n").unwrap().unwrap();
        let Value::Mapping(entries) = root.value else {
            panic!("not a mapping")
        };
        assert_eq!(entries[0].0.line, 1);
        assert_eq!(
            entries[0].1.value,
            Value::Scalar {
                text: "3.10".into(),
                plain: true
            }
        );
        let Value::Sequence(items) = &entries[1].1.value else {
            panic!("not a list")
        };
        assert_eq!(items[0].line, 3);
        assert_eq!(
            items[0].value,
            Value::Scalar {
                text: "x".into(),
                plain: false
            }
        );
        assert_eq!(items[1].line, 4);
    }

    #[test]
    fn offsets_lines() {
        let root = load("a: 1\nb: 2\n", 10, Limits::default())
            .unwrap()
            .unwrap();
        let Value::Mapping(entries) = root.value else {
            panic!("not a mapping")
        };
        assert_eq!(entries[1].0.line, 11);
    }

    #[test]
    fn empty_document_is_none() {
        assert_eq!(load1("").unwrap(), None);
        assert_eq!(load1("# only a comment\n").unwrap(), None);
    }

    #[test]
    fn aliases_expand_within_budget() {
        let root = load1("a: &x [1, 2]\nb: *x\n").unwrap().unwrap();
        let Value::Mapping(entries) = root.value else {
            panic!("not a mapping")
        };
        assert_eq!(entries[0].1.value, entries[1].1.value);
        assert_eq!(entries[1].1.line, 2);
    }

    #[test]
    fn alias_bomb_is_refused_quickly() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let started = std::time::Instant::now();
        let err = load1(&text).unwrap_err();
        assert!(err.message.contains("alias bomb"), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let err = load1(&text).unwrap_err();
        assert!(err.message.contains("nesting deeper than 32"), "{err}");
        let text = (0..40)
            .map(|i| format!("{}k{i}:\n", "  ".repeat(i)))
            .collect::<String>();
        let err = load1(&text).unwrap_err();
        assert!(err.message.contains("nesting"), "{err}");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let err = load1("a: 1\nb: 2\na: 3\n").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("duplicate key `a`"), "{err}");
        assert!(err.message.contains("line 1"), "{err}");
    }

    #[test]
    fn syntax_errors_have_lines() {
        let err = load1("a: 1\nb: [1, 2\nc: 3\n").unwrap_err();
        assert!(err.line >= 2, "{err}");
        assert!(err.message.starts_with("invalid YAML"), "{err}");
    }

    #[test]
    fn tags() {
        let root = load1("a: !!str 3\n").unwrap().unwrap();
        let Value::Mapping(entries) = root.value else {
            panic!("not a mapping")
        };
        assert_eq!(
            entries[0].1.value,
            Value::Scalar {
                text: "3".into(),
                plain: false
            }
        );
        assert!(
            load1("a: !!binary aGk=\n")
                .unwrap_err()
                .message
                .contains("binary")
        );
        assert!(
            load1("a: !custom x\n")
                .unwrap_err()
                .message
                .contains("not supported")
        );
    }

    #[test]
    fn complex_keys_are_refused() {
        assert!(
            load1("? [a]\n: 1\n")
                .unwrap_err()
                .message
                .contains("keys must be scalars")
        );
    }
}
