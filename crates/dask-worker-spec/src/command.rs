//! Finding and editing the Dask worker command line of a container.
//!
//! A container runs a Dask worker when its `command` + `args` contain `dask worker`,
//! `dask-worker` or `python -m distributed.cli.dask_worker`, either directly or inside an
//! `sh -c` / `bash -c` script. Flags are read the way click reads them (`--flag value` and
//! `--flag=value`, last one wins) and edited in place, so everything else the user wrote
//! (other flags, quoting, the rest of a shell script) is left exactly as it was.

use std::ops::Range;

/// `--nthreads`: threads per worker process.
pub const NTHREADS: &str = "--nthreads";
/// `--nworkers`: worker processes in the container.
pub const NWORKERS: &str = "--nworkers";
/// `--nprocs`: the removed old name of `--nworkers`, still in old images' specs.
pub const NPROCS: &str = "--nprocs";
/// `--memory-limit`: bytes per worker process.
pub const MEMORY_LIMIT: &str = "--memory-limit";
/// `--death-timeout`: seconds to wait for the scheduler before giving up.
pub const DEATH_TIMEOUT: &str = "--death-timeout";
/// `--name`: the worker's name at the scheduler.
pub const NAME: &str = "--name";

/// Which array of the container a word lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArgvField {
    /// `command` (the entrypoint override).
    Command,
    /// `args`.
    Args,
}

/// How the worker is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invocation {
    /// `dask worker`.
    DaskWorker,
    /// `dask-worker` (the removed hyphenated script).
    HyphenatedScript,
    /// `python -m distributed.cli.dask_worker`.
    PythonModule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Location {
    /// A whole element of `command` or `args`.
    Element { field: ArgvField, index: usize },
    /// A byte range inside a shell script that is one element.
    Script {
        field: ArgvField,
        index: usize,
        span: Range<usize>,
    },
}

#[derive(Debug, Clone)]
struct Word {
    text: String,
    /// In a shell script, the word has a `$` or backtick the shell expands (outside single
    /// quotes, not escaped). Always false outside a shell, where nothing expands them.
    expands: bool,
    location: Location,
}

impl Location {
    fn field(&self) -> ArgvField {
        match self {
            Location::Element { field, .. } | Location::Script { field, .. } => *field,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum InsertionPoint {
    /// Insert new elements before `index` of `field`.
    Element { field: ArgvField, index: usize },
    /// Insert text at byte `offset` of the script element.
    Script {
        field: ArgvField,
        index: usize,
        offset: usize,
    },
}

impl InsertionPoint {
    fn field(&self) -> ArgvField {
        match self {
            InsertionPoint::Element { field, .. } | InsertionPoint::Script { field, .. } => *field,
        }
    }
}

/// Why a worker command line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandLineError {
    /// A flag that needs a value is the last word of the worker's arguments.
    #[error("{flag} has no value")]
    MissingValue {
        /// The flag.
        flag: String,
    },
    /// The shell script has an unterminated quote or substitution: any text added to it
    /// would land inside the quote, and the shell would refuse it anyway.
    #[error(
        "the shell script has an unterminated quote, substitution or escape, so it cannot be \
         edited safely"
    )]
    UnterminatedShellScript,
}

/// The worker part of a container's command line, located in its `command`/`args`.
#[derive(Debug, Clone)]
pub struct WorkerCommandLine {
    invocation: Invocation,
    in_shell: bool,
    /// The worker's own arguments (after the invocation, before any `--`).
    words: Vec<Word>,
    insertion: InsertionPoint,
    /// The script cannot be edited safely.
    unterminated: bool,
}

/// A flag as found: its value and where that value is written.
#[derive(Debug, Clone)]
struct FlagMatch {
    value: String,
    /// The word holding the value has a `$` or backtick the shell expands.
    expands: bool,
    /// The word holding the value; for `--flag=value` the whole word.
    location: Location,
    joined: bool,
}

impl WorkerCommandLine {
    /// Finds the Dask worker in `command` + `args`; `None` when the container does not
    /// run one (a sidecar, or a custom entrypoint we cannot see into).
    ///
    /// # Example
    /// ```
    /// use dask_worker_spec::WorkerCommandLine;
    /// let args = ["dask", "worker", "--nthreads", "2"].map(String::from);
    /// let line = WorkerCommandLine::find(&[], &args).unwrap();
    /// assert_eq!(line.flag("--nthreads").unwrap().as_deref(), Some("2"));
    /// ```
    pub fn find(command: &[String], args: &[String]) -> Option<Self> {
        let argv: Vec<Word> = command
            .iter()
            .enumerate()
            .map(|(index, text)| (ArgvField::Command, index, text))
            .chain(
                args.iter()
                    .enumerate()
                    .map(|(index, text)| (ArgvField::Args, index, text)),
            )
            .map(|(field, index, text)| Word {
                text: text.clone(),
                expands: false,
                location: Location::Element { field, index },
            })
            .collect();
        if let Some(found) = find_in_shell(&argv) {
            return found;
        }
        let (invocation, start) = find_invocation(&argv)?;
        let (words, insertion) = worker_words(argv, start, |last| match last.location {
            Location::Element { field, index } => InsertionPoint::Element {
                field,
                index: index + 1,
            },
            // Unreachable for element words; keep a sane answer anyway.
            Location::Script { field, index, .. } => InsertionPoint::Element { field, index },
        })?;
        Some(WorkerCommandLine {
            invocation,
            in_shell: false,
            words,
            insertion,
            unterminated: false,
        })
    }

    /// How the worker is started.
    pub fn invocation(&self) -> Invocation {
        self.invocation
    }

    /// Whether the worker is started inside a `sh -c` script.
    pub fn in_shell(&self) -> bool {
        self.in_shell
    }

    fn find_flag(&self, flag: &str) -> Result<Option<FlagMatch>, CommandLineError> {
        let mut found = None;
        let mut iter = self.words.iter().peekable();
        while let Some(word) = iter.next() {
            if word.text == flag {
                let value = iter.next().ok_or_else(|| CommandLineError::MissingValue {
                    flag: flag.to_owned(),
                })?;
                found = Some(FlagMatch {
                    value: value.text.clone(),
                    expands: value.expands,
                    location: value.location.clone(),
                    joined: false,
                });
            } else if let Some(value) = joined_value(&word.text, flag) {
                found = Some(FlagMatch {
                    value: value.to_owned(),
                    expands: word.expands,
                    location: word.location.clone(),
                    joined: true,
                });
            }
        }
        Ok(found)
    }

    /// The value of `flag` (the last one, as click reads it), if present.
    pub fn flag(&self, flag: &str) -> Result<Option<String>, CommandLineError> {
        Ok(self.find_flag(flag)?.map(|m| m.value))
    }

    /// The value of `flag` (the last one) and whether a shell expands variables in it.
    pub(crate) fn flag_word(&self, flag: &str) -> Result<Option<(String, bool)>, CommandLineError> {
        let found = self.find_flag(flag)?;
        Ok(found.map(|m| {
            let expands = self.in_shell && m.expands;
            (m.value, expands)
        }))
    }

    /// Whether `flag` is present at all.
    pub fn has_flag(&self, flag: &str) -> bool {
        self.words
            .iter()
            .any(|w| w.text == flag || joined_value(&w.text, flag).is_some())
    }

    /// The words of the worker's arguments, as the worker will see them (before
    /// Kubernetes expands `$(VAR)`).
    pub fn arguments(&self) -> impl Iterator<Item = &str> {
        self.words.iter().map(|w| w.text.as_str())
    }

    /// Sets `flag` to `value` in `command`/`args`: edits the existing value in place or
    /// appends `flag value` to the worker's arguments. Returns whether anything changed.
    ///
    /// `command` and `args` must be the arrays this command line was found in.
    pub fn set_flag(
        &self,
        command: &mut Vec<String>,
        args: &mut Vec<String>,
        flag: &str,
        value: &str,
    ) -> Result<bool, CommandLineError> {
        self.edit_flag(command, args, flag, value)
            .map(|edited| edited.is_some())
    }

    /// [`set_flag`](Self::set_flag), saying which array it changed (`None`: neither).
    pub(crate) fn edit_flag(
        &self,
        command: &mut Vec<String>,
        args: &mut Vec<String>,
        flag: &str,
        value: &str,
    ) -> Result<Option<ArgvField>, CommandLineError> {
        let existing = self.find_flag(flag)?;
        if self.unterminated && existing.as_ref().is_none_or(|found| found.value != value) {
            return Err(CommandLineError::UnterminatedShellScript);
        }
        match existing {
            Some(found) if found.value == value => Ok(None),
            Some(found) => {
                let replacement = if found.joined {
                    format!("{flag}={value}")
                } else {
                    value.to_owned()
                };
                Ok(replace_at(command, args, &found.location, &replacement)
                    .then_some(found.location.field()))
            }
            None => Ok(insert_at(command, args, &self.insertion, flag, value)
                .then_some(self.insertion.field())),
        }
    }
}

/// The value of `--flag=value` in `word`, for `flag`.
fn joined_value<'a>(word: &'a str, flag: &str) -> Option<&'a str> {
    word.strip_prefix(flag)?.strip_prefix('=')
}

fn field_mut<'a>(
    command: &'a mut Vec<String>,
    args: &'a mut Vec<String>,
    field: ArgvField,
) -> &'a mut Vec<String> {
    match field {
        ArgvField::Command => command,
        ArgvField::Args => args,
    }
}

fn replace_at(
    command: &mut Vec<String>,
    args: &mut Vec<String>,
    location: &Location,
    replacement: &str,
) -> bool {
    match location {
        Location::Element { field, index } => {
            match field_mut(command, args, *field).get_mut(*index) {
                Some(element) => {
                    *element = replacement.to_owned();
                    true
                }
                None => false,
            }
        }
        Location::Script { field, index, span } => {
            let Some(script) = field_mut(command, args, *field).get_mut(*index) else {
                return false;
            };
            if script.get(span.clone()).is_none() {
                return false;
            }
            let text = separated(shell_quote(replacement), script, span.end);
            script.replace_range(span.clone(), &text);
            true
        }
    }
}

fn insert_at(
    command: &mut Vec<String>,
    args: &mut Vec<String>,
    point: &InsertionPoint,
    flag: &str,
    value: &str,
) -> bool {
    match point {
        InsertionPoint::Element { field, index } => {
            let target = field_mut(command, args, *field);
            let at = (*index).min(target.len());
            target.splice(at..at, [flag.to_owned(), value.to_owned()]);
            true
        }
        InsertionPoint::Script {
            field,
            index,
            offset,
        } => {
            let Some(script) = field_mut(command, args, *field).get_mut(*index) else {
                return false;
            };
            if !script.is_char_boundary(*offset) {
                return false;
            }
            let text = separated(format!(" {flag} {}", shell_quote(value)), script, *offset);
            script.insert_str(*offset, &text);
            true
        }
    }
}

/// Text placed right before a `<` or `>` keeps a space from it: a number written against a
/// redirection is its file descriptor (`2>log`), so `--nthreads 2` inserted before `>log`
/// would become `--nthreads` and a redirection of stderr.
fn separated(text: String, script: &str, at: usize) -> String {
    let next = script.get(at..).and_then(|rest| rest.chars().next());
    if matches!(next, Some('<' | '>')) {
        format!("{text} ")
    } else {
        text
    }
}

/// Quotes a value for a POSIX shell unless it is made of characters that need none.
/// `$(VAR)` stays bare: Kubernetes replaces it before the shell runs.
fn shell_quote(value: &str) -> String {
    let safe = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "@%+=:,./_-".contains(c));
    let kube_var = value.starts_with("$(")
        && value.ends_with(')')
        && value
            .get(2..value.len().saturating_sub(1))
            .is_some_and(|name| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
    if safe || kube_var {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

fn basename(word: &str) -> &str {
    word.rsplit('/').next().unwrap_or(word)
}

/// Programs that print or inspect their arguments rather than run them: `echo dask worker`
/// is not a worker.
const NON_EXECUTING: [&str; 14] = [
    "echo", "printf", "test", "[", "[[", "export", "declare", "local", "readonly", "cat", "grep",
    "pip", "pip3", "conda",
];

/// Finds the invocation in `words`; returns it and the index of the first worker argument.
fn find_invocation(words: &[Word]) -> Option<(Invocation, usize)> {
    if words
        .first()
        .is_some_and(|w| NON_EXECUTING.contains(&basename(&w.text)))
    {
        return None;
    }
    for (i, word) in words.iter().enumerate() {
        let name = basename(&word.text);
        if name == "dask" && words.get(i + 1).is_some_and(|w| w.text == "worker") {
            return Some((Invocation::DaskWorker, i + 2));
        }
        if name == "dask-worker" {
            return Some((Invocation::HyphenatedScript, i + 1));
        }
        if name.starts_with("python")
            && is_python_name(name)
            && let Some(start) = python_module_start(words, i + 1)
        {
            return Some((Invocation::PythonModule, start));
        }
    }
    None
}

fn is_python_name(name: &str) -> bool {
    name.strip_prefix("python")
        .is_some_and(|rest| rest.chars().all(|c| c.is_ascii_digit() || c == '.'))
}

const WORKER_MODULE: &str = "distributed.cli.dask_worker";

/// After `python`, skips interpreter options and accepts `-m distributed.cli.dask_worker`.
fn python_module_start(words: &[Word], mut i: usize) -> Option<usize> {
    while let Some(word) = words.get(i) {
        let text = word.text.as_str();
        if text == "-m" {
            return (words.get(i + 1)?.text == WORKER_MODULE).then_some(i + 2);
        }
        if text.strip_prefix("-m") == Some(WORKER_MODULE) {
            return Some(i + 1);
        }
        if !text.starts_with('-') || text == "-" || text == "-c" {
            return None;
        }
        // Options that take a separate value.
        i += if text == "-X" || text == "-W" { 2 } else { 1 };
    }
    None
}

/// Collects the worker's arguments from `start` to the end (or a `--`), taking them out of
/// `words` rather than copying them (this runs on every admission request).
fn worker_words(
    mut words: Vec<Word>,
    start: usize,
    after: impl Fn(&Word) -> InsertionPoint,
) -> Option<(Vec<Word>, InsertionPoint)> {
    let rest = words.get(start..).unwrap_or_default();
    let end = rest.iter().position(|w| w.text == "--");
    let own_len = end.unwrap_or(rest.len());
    let own = rest.get(..own_len)?;
    let insertion = match end.and_then(|e| rest.get(e)) {
        Some(double_dash) => match &double_dash.location {
            Location::Element { field, index } => InsertionPoint::Element {
                field: *field,
                index: *index,
            },
            Location::Script { field, index, span } => InsertionPoint::Script {
                field: *field,
                index: *index,
                offset: span.start.saturating_sub(1),
            },
        },
        None => {
            let last = own
                .last()
                .or_else(|| start.checked_sub(1).and_then(|i| words.get(i)))?;
            after(last)
        }
    };
    words.truncate(start.saturating_add(own_len));
    words.drain(..start.min(words.len()));
    Some((words, insertion))
}

const SHELLS: [&str; 6] = ["sh", "bash", "dash", "ash", "zsh", "ksh"];

/// Looks for `<shell> [options] -c SCRIPT`. `Some(None)` means a shell script that does
/// not start a worker: the shell is the program, nothing else is a worker invocation.
fn find_in_shell(argv: &[Word]) -> Option<Option<WorkerCommandLine>> {
    let shell_at = argv
        .iter()
        .position(|w| SHELLS.contains(&basename(&w.text)))?;
    let mut i = shell_at + 1;
    let mut has_c = false;
    let mut script_at = None;
    while let Some(word) = argv.get(i) {
        let text = word.text.as_str();
        if text == "--" {
            i += 1;
            if has_c {
                script_at = Some(i);
            }
            break;
        }
        if (text.starts_with('-') || text.starts_with('+')) && text.len() > 1 {
            if !text.starts_with("--") {
                has_c |= text.contains('c');
                if text.ends_with('o') {
                    // `-o option` / `-euo pipefail`
                    i += 1;
                }
            }
            i += 1;
            continue;
        }
        if has_c {
            script_at = Some(i);
        }
        break;
    }
    let script_word = argv.get(script_at?)?;
    let Location::Element { field, index } = script_word.location else {
        return Some(None);
    };
    Some(find_in_script(&script_word.text, field, index))
}

fn find_in_script(script: &str, field: ArgvField, index: usize) -> Option<WorkerCommandLine> {
    let (commands, unterminated) = split_simple_commands(script);
    for simple in commands {
        let words: Vec<Word> = simple
            .into_iter()
            .map(|(text, span, expands)| Word {
                text,
                expands,
                location: Location::Script { field, index, span },
            })
            .collect();
        if let Some((invocation, start)) = find_invocation(&words) {
            let (own, insertion) = worker_words(words, start, |last| match &last.location {
                Location::Script { field, index, span } => InsertionPoint::Script {
                    field: *field,
                    index: *index,
                    offset: span.end,
                },
                Location::Element { field, index } => InsertionPoint::Element {
                    field: *field,
                    index: *index,
                },
            })?;
            return Some(WorkerCommandLine {
                invocation,
                in_shell: true,
                words: own,
                insertion,
                unterminated,
            });
        }
    }
    None
}

/// The words of one simple command: unquoted text and byte span in the script.
type SimpleCommand = Vec<(String, Range<usize>, bool)>;

/// Splits a POSIX shell script into simple commands of `(unquoted word, byte span, whether
/// the shell expands a `$` or backtick in it)`.
///
/// Enough of the shell grammar to find a worker invocation and its arguments: quotes,
/// backslashes, `$(...)`, `${...}` and backticks inside words; `;`, `&`, `|`, newlines,
/// parentheses and redirections end a command; `#` starts a comment. The flag says the
/// script ends inside a quote or substitution.
fn split_simple_commands(script: &str) -> (Vec<SimpleCommand>, bool) {
    let chars: Vec<(usize, char)> = script.char_indices().collect();
    let byte_at = |i: usize| chars.get(i).map_or(script.len(), |(b, _)| *b);
    let char_at = |i: usize| chars.get(i).map(|(_, c)| *c);
    let is_operator = |c: char| matches!(c, '\n' | ';' | '&' | '|' | '(' | ')' | '<' | '>');
    let mut commands: Vec<SimpleCommand> = vec![Vec::new()];
    let mut unterminated = false;
    let mut i = 0;
    let end_command = |commands: &mut Vec<SimpleCommand>| {
        if commands.last().is_some_and(|c| !c.is_empty()) {
            commands.push(Vec::new());
        }
    };
    while let Some(c) = char_at(i) {
        if c == ' ' || c == '\t' || c == '\r' {
            i += 1;
            continue;
        }
        if is_operator(c) {
            end_command(&mut commands);
            i += 1;
            continue;
        }
        if c == '\\' && char_at(i + 1) == Some('\n') {
            i += 2;
            continue;
        }
        if c == '#' {
            while char_at(i).is_some_and(|c| c != '\n') {
                i += 1;
            }
            continue;
        }
        let start = byte_at(i);
        let mut text = String::new();
        let mut quoted = false;
        let mut expands = false;
        while let Some(c) = char_at(i) {
            match c {
                ' ' | '\t' | '\r' => break,
                c if is_operator(c) => break,
                '\\' => match char_at(i + 1) {
                    Some('\n') => i += 2,
                    Some(next) => {
                        text.push(next);
                        quoted = true;
                        i += 2;
                    }
                    None => {
                        // A backslash that ends the script would escape whatever is
                        // appended after it: the script cannot be extended safely.
                        text.push('\\');
                        unterminated = true;
                        i += 1;
                    }
                },
                '\'' => {
                    quoted = true;
                    i += 1;
                    let mut closed = false;
                    while let Some(c) = char_at(i) {
                        i += 1;
                        if c == '\'' {
                            closed = true;
                            break;
                        }
                        text.push(c);
                    }
                    unterminated |= !closed;
                }
                '"' => {
                    quoted = true;
                    i += 1;
                    let mut closed = false;
                    while let Some(c) = char_at(i) {
                        if c == '"' {
                            i += 1;
                            closed = true;
                            break;
                        }
                        if c == '\\'
                            && let Some(next) = char_at(i + 1).filter(|n| "\"\\$`\n".contains(*n))
                        {
                            if next != '\n' {
                                text.push(next);
                            }
                            i += 2;
                            continue;
                        }
                        expands |= c == '$' || c == '`';
                        if c == '$' && char_at(i + 1) == Some('(') {
                            let (next, closed) = copy_balanced(&chars, i, '(', ')', &mut text);
                            unterminated |= !closed;
                            i = next;
                            continue;
                        }
                        text.push(c);
                        i += 1;
                    }
                    unterminated |= !closed;
                }
                '$' if matches!(char_at(i + 1), Some('(' | '{')) => {
                    expands = true;
                    let (open, close) = if char_at(i + 1) == Some('(') {
                        ('(', ')')
                    } else {
                        ('{', '}')
                    };
                    let (next, closed) = copy_balanced(&chars, i, open, close, &mut text);
                    unterminated |= !closed;
                    i = next;
                }
                '`' => {
                    expands = true;
                    text.push('`');
                    i += 1;
                    let mut closed = false;
                    while let Some(c) = char_at(i) {
                        text.push(c);
                        i += 1;
                        if c == '`' {
                            closed = true;
                            break;
                        }
                    }
                    unterminated |= !closed;
                }
                c => {
                    expands |= c == '$';
                    text.push(c);
                    i += 1;
                }
            }
        }
        let end = byte_at(i);
        // `2>&1`: a number right before a redirection is an fd, not an argument.
        let io_number = !quoted
            && !text.is_empty()
            && text.chars().all(|c| c.is_ascii_digit())
            && matches!(char_at(i), Some('<' | '>'));
        if io_number {
            end_command(&mut commands);
            continue;
        }
        if text.is_empty() && !quoted {
            continue;
        }
        if let Some(current) = commands.last_mut() {
            current.push((text, start..end, expands));
        }
    }
    commands.retain(|c| !c.is_empty());
    (commands, unterminated)
}

/// Copies `$(` ... `)` (or `${` ... `}`) with nesting, starting at the `$`; returns the
/// index after the closing character (or the end) and whether it was closed.
fn copy_balanced(
    chars: &[(usize, char)],
    start: usize,
    open: char,
    close: char,
    text: &mut String,
) -> (usize, bool) {
    let mut depth = 0usize;
    let mut i = start;
    while let Some((_, c)) = chars.get(i) {
        text.push(*c);
        i += 1;
        if *c == open {
            depth += 1;
        } else if *c == close {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return (i, true);
            }
        }
    }
    (i, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn strings(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| (*s).to_owned()).collect()
    }

    #[rstest]
    #[case::dask_worker(&[], &["dask", "worker", "tcp://s:8786"], Some(Invocation::DaskWorker), false)]
    #[case::hyphenated(&["dask-worker"], &["--nthreads", "2"], Some(Invocation::HyphenatedScript), false)]
    #[case::absolute_path(&["/opt/conda/bin/dask", "worker"], &[], Some(Invocation::DaskWorker), false)]
    #[case::python_module(&["python", "-m", "distributed.cli.dask_worker"], &[], Some(Invocation::PythonModule), false)]
    #[case::python3_unbuffered(&["python3.11", "-u", "-m", "distributed.cli.dask_worker"], &[], Some(Invocation::PythonModule), false)]
    #[case::python_glued_m(&["python", "-mdistributed.cli.dask_worker"], &[], Some(Invocation::PythonModule), false)]
    #[case::behind_tini(&["tini", "-g", "--"], &["dask", "worker"], Some(Invocation::DaskWorker), false)]
    #[case::sh_c(&["sh", "-c", "dask worker --nthreads 2"], &[], Some(Invocation::DaskWorker), true)]
    #[case::bash_c_in_args(&["/bin/bash"], &["-c", "pip install x && exec dask-worker"], Some(Invocation::HyphenatedScript), true)]
    #[case::bash_euo_pipefail(&["bash", "-euo", "pipefail", "-c", "dask worker"], &[], Some(Invocation::DaskWorker), true)]
    #[case::script_split_between_arrays(&["sh", "-c"], &["dask worker"], Some(Invocation::DaskWorker), true)]
    #[case::scheduler_is_not_worker(&["dask", "scheduler"], &[], None, false)]
    #[case::sidecar(&["nginx"], &["-g", "daemon off;"], None, false)]
    #[case::python_script(&["python", "train.py", "-m", "distributed.cli.dask_worker"], &[], None, false)]
    #[case::shell_without_worker(&["sh", "-c", "sleep 1; echo dask worker"], &[], None, false)]
    #[case::dask_alone(&["pip", "install", "dask"], &[], None, false)]
    #[case::echo_in_array(&["echo", "dask", "worker"], &[], None, false)]
    #[case::conda_install_worker_pkg(&["sh", "-c", "conda install dask worker && sleep 1"], &[], None, false)]
    #[case::exec_after_assignment(&["sh", "-c", "X=1 exec dask worker"], &[], Some(Invocation::DaskWorker), true)]
    fn finds_worker_invocations(
        #[case] command: &[&str],
        #[case] args: &[&str],
        #[case] invocation: Option<Invocation>,
        #[case] in_shell: bool,
    ) {
        let found = WorkerCommandLine::find(&strings(command), &strings(args));
        assert_eq!(
            found.as_ref().map(WorkerCommandLine::invocation),
            invocation
        );
        if let Some(found) = found {
            assert_eq!(found.in_shell(), in_shell);
        }
    }

    #[rstest]
    #[case::separate("--nthreads 4", Some("4"))]
    #[case::joined("--nthreads=4", Some("4"))]
    #[case::last_wins("--nthreads 2 --nthreads=8", Some("8"))]
    #[case::absent("--memory-limit 4GB", None)]
    #[case::quoted_in_shell_only("--nthreads '3'", Some("'3'"))]
    fn reads_flags_in_both_forms(#[case] flags: &str, #[case] value: Option<&str>) {
        let mut args = strings(&["dask", "worker"]);
        args.extend(flags.split(' ').map(str::to_owned));
        let line = WorkerCommandLine::find(&[], &args).expect("worker");
        assert_eq!(line.flag(NTHREADS).expect("parse").as_deref(), value);
    }

    #[test]
    fn flag_without_value_is_an_error() {
        let args = strings(&["dask", "worker", "--nthreads"]);
        let line = WorkerCommandLine::find(&[], &args).expect("worker");
        assert_eq!(
            line.flag(NTHREADS),
            Err(CommandLineError::MissingValue {
                flag: NTHREADS.into()
            })
        );
    }

    /// Edits a command line and returns the new `(command, args)`.
    fn edit(
        command: &[&str],
        args: &[&str],
        flag: &str,
        value: &str,
    ) -> (Vec<String>, Vec<String>) {
        let (mut command, mut args) = (strings(command), strings(args));
        let line = WorkerCommandLine::find(&command, &args).expect("worker");
        line.set_flag(&mut command, &mut args, flag, value)
            .expect("edit");
        (command, args)
    }

    #[rstest]
    #[case::append_to_args(&[], &["dask", "worker", "tcp://s:8786"], NTHREADS, "2",
        &[], &["dask", "worker", "tcp://s:8786", "--nthreads", "2"])]
    #[case::append_to_command_when_args_absent(&["dask-worker", "--nthreads", "1"], &[], DEATH_TIMEOUT, "60",
        &["dask-worker", "--nthreads", "1", "--death-timeout", "60"], &[])]
    #[case::replace_separate_value(&[], &["dask", "worker", "--nthreads", "8", "--no-dashboard"], NTHREADS, "2",
        &[], &["dask", "worker", "--nthreads", "2", "--no-dashboard"])]
    #[case::replace_joined_value(&[], &["dask", "worker", "--memory-limit=8GB"], MEMORY_LIMIT, "6GB",
        &[], &["dask", "worker", "--memory-limit=6GB"])]
    #[case::insert_before_double_dash(&["dask", "worker", "--", "extra"], &[], NAME, "w",
        &["dask", "worker", "--name", "w", "--", "extra"], &[])]
    #[case::shell_append(&["sh", "-c", "dask worker --nthreads 2"], &[], DEATH_TIMEOUT, "60",
        &["sh", "-c", "dask worker --nthreads 2 --death-timeout 60"], &[])]
    #[case::shell_append_before_and(&["sh", "-c", "dask worker --nthreads 2 && echo done"], &[], DEATH_TIMEOUT, "60",
        &["sh", "-c", "dask worker --nthreads 2 --death-timeout 60 && echo done"], &[])]
    #[case::shell_append_before_redirect(&["sh", "-c", "dask-worker s:8786 2>&1 | tee log"], &[], NTHREADS, "2",
        &["sh", "-c", "dask-worker s:8786 --nthreads 2 2>&1 | tee log"], &[])]
    #[case::shell_replace_quoted(&["sh", "-c", "exec dask worker --memory-limit \"8 GB\""], &[], MEMORY_LIMIT, "6GB",
        &["sh", "-c", "exec dask worker --memory-limit 6GB"], &[])]
    #[case::shell_replace_joined(&["bash", "-c", "dask worker --nthreads=8\n"], &[], NTHREADS, "2",
        &["bash", "-c", "dask worker --nthreads=2\n"], &[])]
    #[case::shell_kube_var_stays_bare(&["sh", "-c", "dask worker"], &[], NAME, "$(DASK_WORKER_NAME)",
        &["sh", "-c", "dask worker --name $(DASK_WORKER_NAME)"], &[])]
    #[case::shell_odd_value_quoted(&["sh", "-c", "dask worker"], &[], NAME, "a b",
        &["sh", "-c", "dask worker --name 'a b'"], &[])]
    #[case::shell_second_command(&["sh", "-c", "pip install foo; dask worker $(SCHED)"], &[], NTHREADS, "1",
        &["sh", "-c", "pip install foo; dask worker $(SCHED) --nthreads 1"], &[])]
    // Found by the policy_request fuzz target (crash-ef3e2d49...): a number inserted against
    // `>` became the redirection's file descriptor.
    #[case::fuzz_number_inserted_against_a_redirect(&["sh", "-c", "dask worker s:8786>log"], &[], NTHREADS, "2",
        &["sh", "-c", "dask worker s:8786 --nthreads 2 >log"], &[])]
    #[case::number_replaced_against_a_redirect(&["sh", "-c", "dask worker --nthreads x<in"], &[], NTHREADS, "2",
        &["sh", "-c", "dask worker --nthreads 2 <in"], &[])]
    fn edits_in_place(
        #[case] command: &[&str],
        #[case] args: &[&str],
        #[case] flag: &str,
        #[case] value: &str,
        #[case] want_command: &[&str],
        #[case] want_args: &[&str],
    ) {
        let (command, args) = edit(command, args, flag, value);
        assert_eq!(command, strings(want_command));
        assert_eq!(args, strings(want_args));
    }

    #[rstest]
    #[case::quotes("dask worker --name 'my worker' --nthreads=\"2\"", &["--name", "my worker", "--nthreads=2"])]
    #[case::command_substitution("dask worker --name $(hostname -s) --x", &["--name", "$(hostname -s)", "--x"])]
    #[case::braces("dask worker ${SCHED:-tcp://s:8786}", &["${SCHED:-tcp://s:8786}"])]
    #[case::comment("dask worker --a # --b", &["--a"])]
    #[case::line_continuation("dask worker \\\n  --a", &["--a"])]
    #[case::unterminated_quote("dask worker 'oops", &["oops"])]
    #[case::unterminated_substitution("dask worker $(oops", &["$(oops"])]
    fn shell_words(#[case] script: &str, #[case] expected: &[&str]) {
        let command = strings(&["sh", "-c", script]);
        let line = WorkerCommandLine::find(&command, &[]).expect("worker");
        assert_eq!(line.arguments().collect::<Vec<_>>(), expected);
    }

    #[rstest]
    #[case::single_quote("dask worker 'oops")]
    #[case::double_quote("dask worker \"oops")]
    #[case::substitution("dask worker $(oops")]
    #[case::backtick("dask worker `oops")]
    // Found by the policy_request fuzz target (crash-47c4d856...): appending after a
    // trailing backslash glued the new flag into the last word.
    #[case::fuzz_trailing_backslash("dask worker aut:\\\\\\")]
    fn unterminated_scripts_are_not_edited(#[case] script: &str) {
        let mut command = strings(&["sh", "-c", script]);
        let mut args = Vec::new();
        let line = WorkerCommandLine::find(&command, &args).expect("worker");
        assert_eq!(
            line.set_flag(&mut command, &mut args, NAME, "x"),
            Err(CommandLineError::UnterminatedShellScript)
        );
        assert_eq!(command, strings(&["sh", "-c", script]), "nothing changed");
    }

    proptest::proptest! {
        #[test]
        fn editing_never_panics_and_is_stable(
            script in "[ a-z0-9'\"\\\\$(){}|&;<>=#\n-]{0,60}",
            value in "[a-zA-Z0-9 '$()]{1,10}",
        ) {
            let mut command = strings(&["sh", "-c"]);
            command.push(format!("dask worker {script}"));
            let mut args = Vec::new();
            if let Some(line) = WorkerCommandLine::find(&command, &args)
                && line.set_flag(&mut command, &mut args, NAME, &value).is_ok() {
                    let again = WorkerCommandLine::find(&command, &args);
                    proptest::prop_assert!(again.is_some());
                }
        }
    }
}
