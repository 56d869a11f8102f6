//! What is wrong with a policy file, and where.

use std::fmt;
use std::ops::Range;

/// A policy file that cannot be used: every problem found, each naming
/// the file, its line and column, and the field.
///
/// ```text
/// notes.toml:14:11: routes[3].scopes[0]: "notes:raed" is not a scope of this policy; did you mean "notes:read"?
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

/// One problem of a [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The file, as it was named.
    pub file: String,
    /// Its line, from 1; 0 when the problem is the whole file's.
    pub line: usize,
    /// Its column, from 1 (in characters); 0 with line 0.
    pub column: usize,
    /// The field, as a path: `routes[3].scopes[0]`; empty for the whole file.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// Every problem, in the order of the file.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    pub(super) fn new(problems: Vec<Problem>) -> Self {
        Self { problems }
    }

    pub(super) fn whole_file(file: &str, message: String) -> Self {
        Self::new(vec![Problem {
            file: file.to_owned(),
            line: 0,
            column: 0,
            field: String::new(),
            message,
        }])
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.file)?;
        } else {
            write!(f, "{}:{}:{}", self.file, self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Turns byte offsets of one file's text into problems with lines.
pub(super) struct Locator<'a> {
    pub(super) file: &'a str,
    pub(super) text: &'a str,
    pub(super) problems: Vec<Problem>,
}

impl<'a> Locator<'a> {
    pub(super) fn new(file: &'a str, text: &'a str) -> Self {
        Self {
            file,
            text,
            problems: Vec::new(),
        }
    }

    /// Records that `field`, at `span` of the text, is wrong: `message`.
    pub(super) fn problem(
        &mut self,
        span: Range<usize>,
        field: impl Into<String>,
        message: String,
    ) {
        let (line, column) = line_and_column(self.text, span.start);
        self.problems.push(Problem {
            file: self.file.to_owned(),
            line,
            column,
            field: field.into(),
            message,
        });
    }

    /// The problems, if any.
    pub(super) fn finish(self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::new(self.problems))
        }
    }
}

/// The line and column (both from 1, the column in characters) of byte
/// `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::line_and_column;

    #[test]
    fn lines_and_columns_count_from_one() {
        let text = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_and_column(text, 0), (1, 1));
        assert_eq!(line_and_column(text, 4), (1, 5));
        assert_eq!(line_and_column(text, 6), (2, 1));
        // After "bé = ": the é counts once.
        assert_eq!(line_and_column(text, 12), (2, 6));
        assert_eq!(line_and_column(text, 999), (3, 1));
    }
}
