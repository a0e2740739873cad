//! How the tests read a help text's examples: the `modelship ...` command lines under
//! `Examples:`, continuation lines joined, comments dropped, split as a shell would. One reading
//! for the CLI's unit test (every example parses) and the e2e test (every example runs); the e2e
//! binary includes this file by path.

/// The examples of `help`, each as its arguments.
pub fn help_examples(help: &str) -> Vec<Vec<String>> {
    let Some((_, examples)) = help.split_once("Examples:") else { return Vec::new() };
    examples
        .replace("\\\n", " ")
        .lines()
        .map(|line| line.split("  #").next().unwrap_or(line).trim())
        .filter(|line| line.starts_with("modelship ") && !line.contains("&&"))
        .map(|line| shlex::split(line).unwrap_or_else(|| panic!("an example a shell cannot split: {line}")))
        .collect()
}
