//! The local stack's environment file (`.local/stack/env`), read as a shell would:
//! `KEY=value`, `KEY='value'` (POSIX single quotes, `'\''` for a quote), `KEY="value"`,
//! an optional `export `, blank lines and `#` comments.

/// Every `(name, value)` of the file, in order; an error names the line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut vars = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (name, raw) = line.split_once('=').ok_or_else(|| format!("line {}: no '=' in it", index + 1))?;
        let valid_name = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_name {
            return Err(format!("line {}: {name:?} is not a variable name", index + 1));
        }
        let value = unquote(raw).ok_or_else(|| format!("line {}: the quotes of {name} do not close", index + 1))?;
        vars.push((name.to_owned(), value));
    }
    Ok(vars)
}

/// The value as the shell reads it: quoted runs joined, unquoted text as is.
fn unquote(raw: &str) -> Option<String> {
    let mut value = String::new();
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => loop {
                match chars.next()? {
                    '\'' => break,
                    inner => value.push(inner),
                }
            },
            '"' => loop {
                match chars.next()? {
                    '"' => break,
                    '\\' => value.push(chars.next()?),
                    inner => value.push(inner),
                }
            },
            '\\' => value.push(chars.next()?),
            other => value.push(other),
        }
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_single_and_double_quoted_values_read_as_the_shell_reads_them() {
        let text = "# the stack\nA=1\nexport B='Planned Orders'\nC=\"x y\"\n\nD='it'\\''s'\nE=\n";
        let vars = parse(text).unwrap();
        let expected = [("A", "1"), ("B", "Planned Orders"), ("C", "x y"), ("D", "it's"), ("E", "")];
        assert_eq!(vars, expected.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }

    #[test]
    fn a_line_without_a_name_or_with_an_open_quote_is_refused_naming_it() {
        assert_eq!(parse("A=1\nnonsense").unwrap_err(), "line 2: no '=' in it");
        assert!(parse("A='open").unwrap_err().contains("line 1"));
        assert!(parse("1A=x").unwrap_err().contains("not a variable name"));
    }
}
