//! The documents against the code and against themselves: every environment variable the
//! functions read is listed in docs/configuration.md, and every link of README.md and docs/
//! stays inside the repository and finds its file (and, in a Markdown file, its section).
//!
//! Only std, so that it runs without the crate:
//! `rustc --edition 2021 --test tests/docs.rs -o /tmp/docs_test && /tmp/docs_test` from the
//! repository's root.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

/// The repository: cargo's manifest folder, or the working folder for a plain `rustc` run.
fn root() -> PathBuf {
    PathBuf::from(option_env!("CARGO_MANIFEST_DIR").unwrap_or("."))
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every file under `dir` whose name ends with `suffix`, sorted, recursively (files move).
fn files_under(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("a folder entry").path();
            if path.is_dir() {
                pending.push(path);
            } else if path.to_string_lossy().ends_with(suffix) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

// ---------------------------------------------------------------- Rust source, as tokens

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    /// A string literal's text between its quotes, escapes left as written.
    Str(String),
    Punct(char),
    /// Numbers, char literals, lifetimes: nothing a variable name hides in.
    Other,
}

/// Rust source as tokens, comments dropped: enough to find calls and their literal
/// arguments whatever the line breaks, and never a name that is only in a comment.
fn tokens(source: &str) -> Vec<Token> {
    let chars: Vec<char> = source.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '"' {
            let (text, end) = quoted(&chars, i + 1);
            out.push(Token::Str(text));
            i = end;
        } else if c == '\'' {
            i = after_quote_mark(&chars, i);
            out.push(Token::Other);
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token::Other);
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let raw = matches!(word.as_str(), "r" | "br" | "cr");
            if raw && matches!(chars.get(i), Some('"') | Some('#')) {
                let (text, end) = raw_string(&chars, i);
                out.push(Token::Str(text));
                i = end;
            } else if matches!(word.as_str(), "b" | "c") && chars.get(i) == Some(&'"') {
                let (text, end) = quoted(&chars, i + 1);
                out.push(Token::Str(text));
                i = end;
            } else {
                out.push(Token::Ident(word));
            }
        } else {
            out.push(Token::Punct(c));
            i += 1;
        }
    }
    out
}

/// A `"…"` literal whose text starts at `start`: its text and the index after its quote.
fn quoted(chars: &[char], start: usize) -> (String, usize) {
    let mut i = start;
    let mut text = String::new();
    while i < chars.len() && chars[i] != '"' {
        if chars[i] == '\\' && i + 1 < chars.len() {
            text.push(chars[i]);
            i += 1;
        }
        text.push(chars[i]);
        i += 1;
    }
    (text, i + 1)
}

/// `r#"…"#` from its first `#` or `"` at `start`.
fn raw_string(chars: &[char], start: usize) -> (String, usize) {
    let mut i = start;
    let mut hashes = 0;
    while chars.get(i) == Some(&'#') {
        hashes += 1;
        i += 1;
    }
    i += 1; // the opening quote
    let mut text = String::new();
    while i < chars.len() {
        if chars[i] == '"' && (1..=hashes).all(|k| chars.get(i + k) == Some(&'#')) {
            return (text, i + 1 + hashes);
        }
        text.push(chars[i]);
        i += 1;
    }
    (text, i)
}

/// Past a char literal (`'a'`, `'\n'`, `'\u{20ac}'`) or a lifetime (`'a`) starting at `start`.
fn after_quote_mark(chars: &[char], start: usize) -> usize {
    let mut i = start + 1;
    if chars.get(i) == Some(&'\\') {
        while i < chars.len() && chars[i] != '\'' {
            i += 1;
        }
        return i + 1;
    }
    if chars.get(i + 1) == Some(&'\'') {
        return i + 2;
    }
    while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
        i += 1;
    }
    i
}

/// The index of the `close` that balances the `open` at `start`.
fn balanced(tokens: &[Token], start: usize, open: char, close: char) -> usize {
    let mut depth = 0;
    for (i, token) in tokens.iter().enumerate().skip(start) {
        if *token == Token::Punct(open) {
            depth += 1;
        } else if *token == Token::Punct(close) {
            depth -= 1;
            if depth == 0 {
                return i;
            }
        }
    }
    tokens.len()
}

fn is_ident(token: Option<&Token>, names: &[&str]) -> bool {
    matches!(token, Some(Token::Ident(name)) if names.contains(&name.as_str()))
}

/// Tokens of items under `#[cfg(test)]` (or any cfg naming `test` without `not`): unit
/// tests set variables of their own, they do not configure a function.
fn test_only(tokens: &[Token]) -> Vec<bool> {
    let mut skip = vec![false; tokens.len()];
    let mut i = 0;
    while i + 2 < tokens.len() {
        if tokens[i] == Token::Punct('#') && tokens[i + 1] == Token::Punct('[') && is_ident(tokens.get(i + 2), &["cfg"])
        {
            let end = balanced(tokens, i + 1, '[', ']');
            let attribute = &tokens[i..end.min(tokens.len())];
            let names = |n: &str| attribute.contains(&Token::Ident(n.to_owned()));
            if names("test") && !names("not") {
                // The item: up to its `;`, or its body's closing brace.
                let mut j = end;
                while j < tokens.len() && tokens[j] != Token::Punct('{') && tokens[j] != Token::Punct(';') {
                    j += 1;
                }
                let item_end =
                    if tokens.get(j) == Some(&Token::Punct('{')) { balanced(tokens, j, '{', '}') } else { j };
                for flag in skip.iter_mut().take(item_end.min(tokens.len() - 1) + 1).skip(i) {
                    *flag = true;
                }
                i = item_end;
            }
        }
        i += 1;
    }
    skip
}

/// Token ranges of the bodies of functions that take the per-target reader (`Scoped`):
/// what they read is read as `NAME_<TARGET>` first, then `NAME`.
fn per_target_bodies(tokens: &[Token]) -> Vec<(usize, usize)> {
    let mut bodies = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        if *token != Token::Ident("fn".to_owned()) {
            continue;
        }
        let mut j = i + 1;
        while j < tokens.len() && tokens[j] != Token::Punct('{') && tokens[j] != Token::Punct(';') {
            j += 1;
        }
        let signature = &tokens[i..j.min(tokens.len())];
        if tokens.get(j) == Some(&Token::Punct('{')) && signature.contains(&Token::Ident("Scoped".to_owned())) {
            bodies.push((j, balanced(tokens, j, '{', '}')));
        }
    }
    bodies
}

/// `SOME_NAME`: upper case, digits and single inner underscores.
fn is_variable_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_uppercase())
        && !name.ends_with('_')
        && !name.contains("__")
        && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// How the code reads one variable.
#[derive(Debug, Default)]
struct Read {
    files: BTreeSet<String>,
    /// Through the per-target reader: `NAME_<TARGET>` wins over `NAME`.
    per_target: bool,
}

/// The methods of the configuration's reader (`Env`, and `Scoped` for per-target names).
const READER_METHODS: &[&str] = &["required", "parsed", "seconds", "millis", "get", "list"];

/// Every variable the code reads: a literal name passed to a reader method or to
/// `std::env::var`/`var_os`, or a `format!("NAME_{…}")` passed to one (`NAME_<TARGET>`).
fn variables_read(file: &str, source: &str, reads: &mut BTreeMap<String, Read>) {
    let tokens = tokens(source);
    let skip = test_only(&tokens);
    let per_target = per_target_bodies(&tokens);
    for i in 0..tokens.len() {
        if skip[i] {
            continue;
        }
        let method_call = i > 0 && tokens[i - 1] == Token::Punct('.') && is_ident(tokens.get(i), READER_METHODS);
        let env_call = i > 1
            && tokens[i - 1] == Token::Punct(':')
            && tokens[i - 2] == Token::Punct(':')
            && is_ident(tokens.get(i), &["var", "var_os"]);
        if !method_call && !env_call {
            continue;
        }
        let mut j = i + 1;
        // A turbofish: `parsed::<u32>(…)`.
        if tokens.get(j) == Some(&Token::Punct(':')) && tokens.get(j + 2) == Some(&Token::Punct('<')) {
            j = balanced(&tokens, j + 2, '<', '>') + 1;
        }
        if tokens.get(j) != Some(&Token::Punct('(')) {
            continue;
        }
        j += 1;
        if tokens.get(j) == Some(&Token::Punct('&')) {
            j += 1;
        }
        let name = match (tokens.get(j), tokens.get(j + 1), tokens.get(j + 2), tokens.get(j + 3)) {
            (Some(Token::Str(name)), ..) => Some(name.clone()),
            (Some(Token::Ident(format)), Some(Token::Punct('!')), Some(Token::Punct('(')), Some(Token::Str(f)))
                if format == "format" =>
            {
                // `SFTP_SECRET_ID_{t}` → `SFTP_SECRET_ID_<TARGET>`; `{name}_{target}` names none.
                let prefix = f.split('{').next().unwrap_or_default();
                prefix
                    .strip_suffix('_')
                    .filter(|stem| is_variable_name(stem) && f.len() > prefix.len())
                    .map(|stem| format!("{stem}_<TARGET>"))
            }
            _ => None,
        };
        let Some(name) = name.filter(|n| is_variable_name(n) || n.ends_with("_<TARGET>")) else { continue };
        let read = reads.entry(name).or_default();
        read.files.insert(file.to_owned());
        read.per_target |= method_call && per_target.iter().any(|&(start, end)| start < i && i < end);
    }
}

fn all_variables_read() -> BTreeMap<String, Read> {
    let mut reads = BTreeMap::new();
    for path in files_under(&root().join("src"), ".rs") {
        variables_read(&relative(&path), &read(&path), &mut reads);
    }
    reads
}

// ---------------------------------------------------------------- Markdown

/// Lines of a Markdown text outside fenced code blocks, with their line numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| trimmed.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(open), Some(m)) if open == m => fence = None,
            (None, None) => lines.push((n + 1, line)),
            _ => {}
        }
    }
    lines
}

/// The line without its inline code spans (what is inside backticks is not a link).
fn without_code_spans(line: &str) -> String {
    let mut out = String::new();
    let mut in_code = false;
    for c in line.chars() {
        if c == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(c);
        }
    }
    out
}

/// The `(heading level, heading text)` of an ATX heading line.
fn heading(line: &str) -> Option<(usize, &str)> {
    let level = line.chars().take_while(|&c| c == '#').count();
    let rest = &line[level..];
    ((1..=6).contains(&level) && (rest.is_empty() || rest.starts_with(' '))).then(|| (level, rest.trim()))
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// Every anchor a Markdown file offers: its headings (repeats numbered as GitHub does)
/// and explicit `<a id="…">` / `name="…"`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut anchors = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        if let Some((_, title)) = heading(line) {
            let base = slug(title);
            let count = seen.entry(base.clone()).or_insert(0);
            anchors.insert(if *count == 0 { base.clone() } else { format!("{base}-{count}") });
            *count += 1;
        }
        for attribute in ["id=\"", "name=\""] {
            for (at, _) in line.match_indices(attribute) {
                let value = &line[at + attribute.len()..];
                if let Some(end) = value.find('"') {
                    anchors.insert(value[..end].to_owned());
                }
            }
        }
    }
    anchors
}

/// Every link target of a Markdown text with its line: inline `[text](target)`, images,
/// reference definitions `[label]: target`, and HTML `href`/`src`.
fn links(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    for (n, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix('[') {
            if let Some((_, target)) = rest.split_once("]:") {
                if let Some(target) = target.split_whitespace().next() {
                    found.push((n, target.trim_matches(['<', '>']).to_owned()));
                }
            }
        }
        for (at, _) in line.match_indices("](") {
            let rest = &line[at + 2..];
            let mut depth = 1;
            let end = rest
                .char_indices()
                .find(|&(_, c)| {
                    if c == '(' {
                        depth += 1;
                    } else if c == ')' {
                        depth -= 1;
                    }
                    depth == 0
                })
                .map_or(rest.len(), |(end, _)| end);
            let target = rest[..end].split_whitespace().next().unwrap_or_default();
            found.push((n, target.trim_matches(['<', '>']).to_owned()));
        }
        for attribute in ["href=\"", "src=\""] {
            for (at, _) in line.match_indices(attribute) {
                let value = &line[at + attribute.len()..];
                if let Some(end) = value.find('"') {
                    found.push((n, value[..end].to_owned()));
                }
            }
        }
    }
    found
}

/// `base/target` with `.` and `..` resolved without the file system; `None` when it climbs
/// above the repository's root.
fn resolve_inside(base: &Path, target: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = Vec::new();
    for component in base.join(target).components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(part) => parts.push(part.to_string_lossy().into_owned()),
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

// ---------------------------------------------------------------- the tests

#[test]
fn every_variable_the_code_reads_is_listed_in_docs_configuration_md() {
    let reads = all_variables_read();
    // The reader's method names are what this test knows; if they change, it must learn
    // them rather than pass on finding nothing.
    for must in ["STAGING_BUCKET", "KINAXIS_BASE_URL", "SFTP_SECRET_ID_<TARGET>", "RUST_LOG"] {
        assert!(reads.contains_key(must), "found no read of {must} in src/: teach tests/docs.rs how the code reads it");
    }
    assert!(reads.values().any(|r| r.per_target), "found no per-target (`Scoped`) read in src/");

    let doc = read(&root().join("docs/configuration.md"));
    // The variables in the first cell of a table row, and those in the per-target
    // section's tables (a heading naming `_<TARGET>` and stating the override rule).
    let mut listed = BTreeSet::new();
    let mut listed_per_target = BTreeSet::new();
    let mut per_target_level: Option<usize> = None;
    for (_, line) in prose_lines(&doc) {
        if let Some((level, title)) = heading(line) {
            if per_target_level.is_some_and(|l| level <= l) {
                per_target_level = None;
            }
            if title.contains("_<TARGET>") {
                per_target_level = Some(level);
            }
            continue;
        }
        let Some(first_cell) = line.trim_start().strip_prefix('|').and_then(|row| row.split('|').next()) else {
            continue;
        };
        for (k, span) in first_cell.split('`').enumerate() {
            if k % 2 == 1 {
                listed.insert(span.to_owned());
                if per_target_level.is_some() {
                    listed_per_target.insert(span.to_owned());
                }
            }
        }
    }

    let mut missing = Vec::new();
    for (name, how) in &reads {
        let files = how.files.iter().cloned().collect::<Vec<_>>().join(", ");
        if !listed.contains(name) {
            missing.push(format!("{name} (read in {files}) is in no table of docs/configuration.md"));
        } else if how.per_target && !listed_per_target.contains(name) {
            missing.push(format!(
                "{name} (read in {files}) is read per target as {name}_<TARGET>, but docs/configuration.md does not \
                 list it in the section on `X_<TARGET>` overrides"
            ));
        }
    }
    assert!(
        missing.is_empty(),
        "the code reads variables docs/configuration.md does not document:\n  {}",
        missing.join("\n  ")
    );
}

#[test]
fn every_link_of_the_readme_and_docs_stays_in_the_repository_and_finds_its_target() {
    let root = root();
    let mut documents = vec![root.join("README.md")];
    documents.extend(files_under(&root.join("docs"), ".md"));
    let mut problems = Vec::new();
    for document in &documents {
        let text = read(document);
        let here = relative(document);
        let base = Path::new(&here).parent().unwrap_or(Path::new("")).to_path_buf();
        for (line, target) in links(&text) {
            let at = format!("{here}:{line}: ({target})");
            let scheme = target.split_once(':').is_some_and(|(s, _)| {
                s.starts_with(|c: char| c.is_ascii_alphabetic())
                    && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
            });
            if target.is_empty() {
                problems.push(format!("{at} is an empty link"));
                continue;
            }
            if scheme || target.starts_with("//") {
                problems.push(format!("{at} leaves the repository (copy what the reader needs into docs/)"));
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((path, anchor)) => (path, Some(anchor)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                PathBuf::from(&here)
            } else if path.starts_with('/') {
                problems.push(format!("{at} is an absolute path: it means nothing in a clone"));
                continue;
            } else {
                match resolve_inside(&base, path) {
                    Some(file) => file,
                    None => {
                        problems.push(format!("{at} resolves outside the repository's tree"));
                        continue;
                    }
                }
            };
            let on_disk = root.join(&file);
            if !on_disk.exists() {
                problems.push(format!("{at}: {} does not exist", file.display()));
                continue;
            }
            if let Some(anchor) = anchor.filter(|_| file.extension().is_some_and(|e| e == "md")) {
                if !anchors(&read(&on_disk)).contains(anchor) {
                    problems.push(format!("{at}: {} has no section #{anchor}", file.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "links that break in a clone:\n  {}", problems.join("\n  "));
}
