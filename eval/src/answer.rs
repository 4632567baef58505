//! How a generated answer is compared with the references, as lm-evaluation-harness's task
//! configs say: an optional extraction regex (group 1 of the first match, else `[invalid]`),
//! Minerva MATH's answer normalisation, then exact match after stripping whitespace, with
//! optional regexes removed from both sides, case folded and punctuation removed.
use crate::{Error, Result};
use fancy_regex::Regex;

/// The comparison of one generation item (all off: exact match after stripping whitespace).
#[derive(Debug, Clone, Default)]
pub struct Scoring {
    /// Compare case-insensitively.
    pub ignore_case: bool,
    /// Remove ASCII punctuation (Python's `string.punctuation`) from both sides.
    pub ignore_punctuation: bool,
    /// Removed (replaced by nothing) from both sides, in order.
    pub regexes_to_ignore: Vec<Regex>,
    /// The answer is group 1 (else the whole match) of its first match in the generation.
    pub answer_regex: Option<Regex>,
    /// Minerva MATH: the generation gets "I hope it is correct." appended before extraction
    /// (the prompt's stop string eats it) and the extracted answer is normalised.
    pub minerva_math: bool,
}

fn regex(text: &str, what: &str) -> Result<Regex> {
    Regex::new(text).map_err(|e| Error::Unsupported(format!("{what} {text:?} is not a valid regex: {e}")))
}

impl Scoring {
    /// From the optional keys of a task line.
    pub fn from_json(obj: &serde_json::Map<String, serde_json::Value>) -> Result<Scoring> {
        let flag = |k: &str| obj.get(k).and_then(serde_json::Value::as_bool).unwrap_or(false);
        let mut s = Scoring { ignore_case: flag("ignore_case"), ignore_punctuation: flag("ignore_punctuation"), ..Scoring::default() };
        if let Some(list) = obj.get("regexes_to_ignore") {
            let list = list.as_array().ok_or_else(|| Error::Unsupported("\"regexes_to_ignore\" must be a list of regexes".into()))?;
            for r in list {
                let text = r.as_str().ok_or_else(|| Error::Unsupported("\"regexes_to_ignore\" must be a list of regexes".into()))?;
                s.regexes_to_ignore.push(regex(text, "regexes_to_ignore")?);
            }
        }
        if let Some(r) = obj.get("answer_regex") {
            let text = r.as_str().ok_or_else(|| Error::Unsupported("\"answer_regex\" must be a regex".into()))?;
            s.answer_regex = Some(regex(text, "answer_regex")?);
        }
        match obj.get("normalize").and_then(serde_json::Value::as_str) {
            None => {}
            Some("minerva_math") => s.minerva_math = true,
            Some(other) => return Err(Error::Unsupported(format!("unknown \"normalize\" {other:?} (minerva_math)"))),
        }
        Ok(s)
    }

    /// The answer taken from a generation (after the stop strings were cut). A regex that
    /// exceeds fancy-regex's backtracking limit on this text is an error, not a panic.
    pub fn extract(&self, generated: &str) -> std::result::Result<String, String> {
        let text = if self.minerva_math { format!("{generated}I hope it is correct.") } else { generated.to_string() };
        let answer = match &self.answer_regex {
            None => text,
            Some(r) => match r.captures(&text).map_err(|e| format!("\"answer_regex\" {:?} failed on the generation: {e}", r.as_str()))? {
                Some(c) => c.get(1).or_else(|| c.get(0)).map_or(String::new(), |m| m.as_str().to_string()),
                None => "[invalid]".to_string(),
            },
        };
        Ok(if self.minerva_math { normalize_final_answer(&answer) } else { answer })
    }

    fn canonical(&self, text: &str) -> std::result::Result<String, String> {
        let mut s = text.trim().to_string();
        for r in &self.regexes_to_ignore {
            s = r.try_replacen(&s, 0, "").map_err(|e| format!("\"regexes_to_ignore\" {:?} failed: {e}", r.as_str()))?.into_owned();
        }
        if self.ignore_case {
            s = s.to_lowercase();
        }
        if self.ignore_punctuation {
            s.retain(|c| !c.is_ascii_punctuation());
        }
        Ok(s.trim().to_string())
    }

    /// Whether the extracted answer equals any reference.
    pub fn matches(&self, answer: &str, references: &[String]) -> std::result::Result<bool, String> {
        let a = self.canonical(answer)?;
        for r in references {
            if self.canonical(r)? == a {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

const SUBSTITUTIONS: [(&str, &str); 10] = [
    ("an ", ""),
    ("a ", ""),
    (".$", "$"),
    ("\\$", ""),
    ("\\ ", ""),
    (" ", ""),
    ("mbox", "text"),
    (",\\text{and}", ","),
    ("\\text{and}", ","),
    ("\\text{m}", "\\text{}"),
];

const REMOVED_EXPRESSIONS: [&str; 45] = [
    "square",
    "ways",
    "integers",
    "dollars",
    "mph",
    "inches",
    "ft",
    "hours",
    "km",
    "units",
    "\\ldots",
    "sue",
    "points",
    "feet",
    "minutes",
    "digits",
    "cents",
    "degrees",
    "cm",
    "gm",
    "pounds",
    "meters",
    "meals",
    "edges",
    "students",
    "childrentickets",
    "multiples",
    "\\text{s}",
    "\\text{.}",
    "\\text{\ns}",
    "\\text{}^2",
    "\\text{}^3",
    "\\text{\n}",
    "\\text{}",
    "\\mathrm{th}",
    "^\\circ",
    "^{\\circ}",
    "\\;",
    ",\\!",
    "{,}",
    "\"",
    "\\dots",
    "",
    "",
    "",
];

fn sub(pattern: &str, replacement: &str, text: &str) -> String {
    let r = Regex::new(pattern).expect("internal: a fixed regex");
    r.replace_all(text, replacement).into_owned()
}

/// lm-eval-harness's `minerva_math` `normalize_final_answer`, step for step.
pub fn normalize_final_answer(answer: &str) -> String {
    let mut s = answer.rsplit('=').next().unwrap_or("").to_string();
    let alpha = |e: &str| !e.is_empty() && e.chars().all(char::is_alphabetic);
    let removed = REMOVED_EXPRESSIONS.iter().filter(|e| !e.is_empty());
    for e in removed.clone().filter(|e| alpha(e)) {
        s = sub(&format!(r"(?<!\\)\b{e}\b"), "", &s);
    }
    for (before, after) in SUBSTITUTIONS {
        s = s.replace(before, after);
    }
    let command = Regex::new(r"\\[a-zA-Z]+").expect("internal: a fixed regex");
    for e in removed {
        if alpha(e) {
            // Outside LaTeX commands only (Python's re.split with a capturing group).
            let mut out = String::new();
            let mut last = 0;
            for m in command.find_iter(&s).flatten() {
                out.push_str(&s[last..m.start()].replace(e, ""));
                out.push_str(m.as_str());
                last = m.end();
            }
            out.push_str(&s[last..].replace(e, ""));
            s = out;
        } else {
            s = s.replace(e, "");
        }
    }
    s = sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$$${3}$$", &s);
    s = sub(r"(\\text\{)(.*?)(\})", "${2}", &s);
    s = sub(r"(\\textbf\{)(.*?)(\})", "${2}", &s);
    s = sub(r"(\\overline\{)(.*?)(\})", "${2}", &s);
    s = sub(r"(\\boxed\{)(.*)(\})", "${2}", &s);
    s = sub(r"(frac)([^{])(.)", "frac{${2}}{${3}}", &s);
    s = sub(r"(sqrt)(\[[^\]]*\])(\w)", "${1}${2}{${3}}", &s);
    s = sub(r"(sqrt)(?!\[)([^{])", "sqrt{${2}}", &s);
    s = s.replace('$', "");
    if Regex::new(r"^-?\d{1,3}(,\d{3})+$").expect("internal: a fixed regex").is_match(&s).unwrap_or(false) {
        s = s.replace(',', "");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minerva_normalisation_matches_the_harness() {
        // Expected values from scripts/make_eval_tasks.py's copy of the harness's function.
        for (input, want) in [
            ("\\boxed{6\\text{ inches}}", "6"),
            ("x = \\frac12", "\\frac{1}{2}"),
            ("$1,000$", "1000"),
            ("\\sqrt2 + 3 dollars", "\\sqrt{2}+3"),
            ("10^\\circ", "10"),
            ("\\text{(A)}", "(A)"),
            ("5 \\mbox{ cm}", "5"),
            ("\\sqrt[3]x", "\\sqrt[3]{x}"),
            ("The answer is 12 units", "Theansweris12"),
            ("a = b = \\$4.50", "4.50"),
        ] {
            assert_eq!(normalize_final_answer(input), want, "{input:?}");
        }
    }

    #[test]
    fn gsm8k_and_open_qa_scoring() {
        let obj = |j: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(j).unwrap();
        let gsm = Scoring::from_json(&obj(
            r#####"{"answer_regex": "#### (\\-?[0-9\\.\\,]+)", "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}"#####,
        ))
        .unwrap();
        assert_eq!(gsm.extract("She pays 6 + 12 = 18.\n#### 1,800").unwrap(), "1,800");
        assert!(gsm.matches("1,800", &["1800".into()]).unwrap());
        assert_eq!(gsm.extract("no final line").unwrap(), "[invalid]");
        assert!(!gsm.matches("[invalid]", &["18".into()]).unwrap());
        let nq = Scoring::from_json(&obj(
            r#"{"ignore_case": true, "ignore_punctuation": true, "regexes_to_ignore": ["\\b(?:The |the |An |A |The |a |an )"]}"#,
        ))
        .unwrap();
        assert!(nq.matches(" The Beatles!", &["beatles".into()]).unwrap());
        assert!(!nq.matches("The Stones", &["beatles".into()]).unwrap());
        let math = Scoring::from_json(&obj(
            r#"{"answer_regex": "Final Answer: The final answer is(.*?). I hope it is correct.", "normalize": "minerva_math"}"#,
        ))
        .unwrap();
        assert_eq!(math.extract("so x=2.\nFinal Answer: The final answer is $\\frac12$. ").unwrap(), "\\frac{1}{2}");
        assert!(Scoring::from_json(&obj(r#"{"normalize": "other"}"#)).is_err());
        assert!(Scoring::from_json(&obj(r#"{"answer_regex": "(unclosed"}"#)).is_err());
        // Defaults: exact match after stripping whitespace.
        let plain = Scoring::default();
        assert!(plain.matches(" barn ", &["barn".into()]).unwrap() && !plain.matches("Barn", &["barn".into()]).unwrap());
    }

    #[test]
    fn a_regex_that_backtracks_past_the_limit_is_an_error_not_a_panic() {
        let obj = |j: &str| serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(j).unwrap();
        // A backreference makes fancy-regex backtrack; nested quantifiers make that exponential.
        let evil = Scoring::from_json(&obj(r#"{"answer_regex": "(a+)+\\1b"}"#)).unwrap();
        let text = "a".repeat(40);
        let err = evil.extract(&text).unwrap_err();
        assert!(err.contains("answer_regex") && err.contains("failed"), "{err}");
        let evil = Scoring::from_json(&obj(r#"{"regexes_to_ignore": ["(a+)+\\1b"]}"#)).unwrap();
        let err = evil.matches(&text, &["x".into()]).unwrap_err();
        assert!(err.contains("regexes_to_ignore"), "{err}");
    }
}
