//! Whether a converted model answers as the original did, pure: the original's outputs (from
//! the converter, run where the original ran) against ONNX Runtime's on the same rows.
//!
//! Numbers are compared per element, `|onnx - original| <= absolute + relative * |original|`;
//! a row's difference is the largest of its elements'. Labels must be equal, except on a row
//! whose two most likely classes the original gives probabilities within the tolerance of each
//! other (a tie either side may break). The verdict keeps the worst rows, with their inputs,
//! for the refusal and the record.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// How close is equal.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    pub absolute: f64,
    pub relative: f64,
}

impl Default for Tolerance {
    /// 1e-5 absolute; on a regressor's predictions also 1e-5 relative (float32, which ONNX
    /// models compute in, carries about 7 significant digits: a prediction of 250,000 is only
    /// within 0.016 of itself).
    fn default() -> Self {
        Tolerance { absolute: 1e-5, relative: 1e-5 }
    }
}

impl Tolerance {
    /// Probabilities are judged absolutely; other numbers (predictions) relatively too.
    fn allows(&self, output: &str, original: f64, diff: f64) -> bool {
        let relative = if output == "probabilities" { 0.0 } else { self.relative };
        diff <= self.absolute + relative * original.abs()
    }
}

/// One output's values, flattened, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Numbers(Vec<f64>),
    Labels(Vec<String>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Numbers(v) => v.len(),
            Values::Labels(v) => v.len(),
        }
    }
}

/// An output of both models.
#[derive(Debug, Clone)]
pub struct Pair<'a> {
    pub name: &'a str,
    pub original: &'a Values,
    pub onnx: &'a Values,
}

/// A row that differs (or the worst ones, when none does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RowDiff {
    pub row: usize,
    pub output: String,
    /// The largest difference on the row (numbers), or 1 for a label that differs.
    pub diff: f64,
    pub original: String,
    pub onnx: String,
    /// The row's inputs, shortened.
    pub inputs: String,
}

/// What the comparison found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub rows: usize,
    pub tolerance: Tolerance,
    /// The largest difference on any probability or prediction.
    pub max_abs_diff: f64,
    /// Rows outside the tolerance (or with another label).
    pub rows_outside: usize,
    /// The worst rows, worst first (at most five).
    pub worst: Vec<RowDiff>,
}

impl Verdict {
    pub fn equal(&self) -> bool {
        self.rows_outside == 0
    }

    /// The worst rows as a table for a terminal.
    pub fn worst_rows_table(&self) -> String {
        let mut out = String::new();
        for w in &self.worst {
            let _ = writeln!(out, "  row {:>5}  {:<13} |diff| {:<9.3e} original {}  onnx {}  inputs {}", w.row, w.output, w.diff, w.original, w.onnx, w.inputs);
        }
        out
    }
}

/// Compares every output the original answered. `inputs_of(row)` renders a row's inputs.
/// Outputs of different lengths, or missing, are an error, not a difference.
pub fn judge(pairs: &[Pair<'_>], rows: usize, tolerance: Tolerance, inputs_of: &dyn Fn(usize) -> String) -> Result<Verdict, String> {
    if pairs.is_empty() || rows == 0 {
        return Err("nothing to compare: no outputs or no rows".to_owned());
    }
    let mut row_worst: Vec<Option<(bool, RowDiff)>> = vec![None; rows];
    let mut max_abs_diff = 0.0_f64;
    let mut outside = vec![false; rows];
    let probabilities = pairs.iter().find(|p| p.name == "probabilities").and_then(|p| match p.original {
        Values::Numbers(v) => Some(v),
        Values::Labels(_) => None,
    });
    for pair in pairs {
        if pair.original.len() != pair.onnx.len() {
            return Err(format!("output {} has {} values from the original and {} from ONNX Runtime", pair.name, pair.original.len(), pair.onnx.len()));
        }
        if rows == 0 || pair.original.len() % rows != 0 {
            return Err(format!("output {} has {} values, not a whole number per row of {rows} rows", pair.name, pair.original.len()));
        }
        let width = pair.original.len() / rows;
        for row in 0..rows {
            let span = row * width..(row + 1) * width;
            let (diff, bad, original, onnx) = match (pair.original, pair.onnx) {
                (Values::Numbers(a), Values::Numbers(b)) => {
                    let mut diff = 0.0_f64;
                    let mut bad = false;
                    for (x, y) in a[span.clone()].iter().zip(&b[span.clone()]) {
                        let d = if x.is_nan() && y.is_nan() { 0.0 } else { (x - y).abs() };
                        let d = if d.is_nan() { f64::INFINITY } else { d };
                        bad |= !tolerance.allows(pair.name, *x, d);
                        diff = diff.max(d);
                    }
                    max_abs_diff = max_abs_diff.max(diff);
                    (diff, bad, numbers(&a[span.clone()]), numbers(&b[span]))
                }
                (a, b) => {
                    let (a, b) = (labels(a, span.clone()), labels(b, span));
                    let differ = a != b;
                    let tied = probabilities.is_some_and(|p| top_two_within(p, rows, row, tolerance.absolute));
                    (if differ { 1.0 } else { 0.0 }, differ && !tied, a.join(","), b.join(","))
                }
            };
            outside[row] |= bad;
            // A row shows its output outside the tolerance first, then its largest difference.
            let replace = match &row_worst[row] {
                None => true,
                Some((was_bad, w)) => (bad, diff) > (*was_bad, w.diff),
            };
            if replace {
                row_worst[row] = Some((bad, RowDiff { row, output: pair.name.to_owned(), diff, original, onnx, inputs: String::new() }));
            }
        }
    }
    let rows_outside = outside.iter().filter(|b| **b).count();
    let mut ranked: Vec<(bool, RowDiff)> = row_worst.into_iter().flatten().map(|(_, w)| (outside[w.row], w)).collect();
    // Rows outside the tolerance first, then by difference; ties by row number.
    ranked.sort_by(|(a_out, a), (b_out, b)| b_out.cmp(a_out).then(b.diff.total_cmp(&a.diff)).then(a.row.cmp(&b.row)));
    let worst = ranked
        .into_iter()
        .take(5)
        .map(|(_, mut w)| {
            w.inputs = inputs_of(w.row);
            w
        })
        .collect();
    Ok(Verdict { rows, tolerance, max_abs_diff, rows_outside, worst })
}

fn numbers(v: &[f64]) -> String {
    let shown: Vec<String> = v.iter().take(4).map(|x| format!("{x:.6}")).collect();
    if v.len() > 4 { format!("[{}, ...]", shown.join(", ")) } else { format!("[{}]", shown.join(", ")) }
}

fn labels(v: &Values, span: std::ops::Range<usize>) -> Vec<String> {
    match v {
        Values::Labels(l) => l[span].to_vec(),
        // Integer labels from ONNX Runtime (INT64) against the original's.
        Values::Numbers(n) => n[span].iter().map(|x| number_label(*x)).collect(),
    }
}

/// A numeric label as text: `1`, not `1.0`, so integer classes compare with their text form.
pub fn number_label(x: f64) -> String {
    if x.fract() == 0.0 { (x as i64).to_string() } else { x.to_string() }
}

fn top_two_within(probabilities: &[f64], rows: usize, row: usize, tolerance: f64) -> bool {
    let width = probabilities.len() / rows.max(1);
    let mut p: Vec<f64> = probabilities[row * width..(row + 1) * width].to_vec();
    p.sort_by(|a, b| b.total_cmp(a));
    p.len() >= 2 && p[0] - p[1] <= 2.0 * tolerance
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nums(v: &[f64]) -> Values {
        Values::Numbers(v.to_vec())
    }

    fn labs(v: &[&str]) -> Values {
        Values::Labels(v.iter().map(|s| (*s).to_owned()).collect())
    }

    struct Case {
        name: &'static str,
        original: Vec<(&'static str, Values)>,
        onnx: Vec<(&'static str, Values)>,
        rows: usize,
        tolerance: Tolerance,
        equal: bool,
        outside: usize,
        worst_row: Option<usize>,
    }

    #[test]
    fn verdicts() {
        let t = Tolerance::default();
        let cases = vec![
            Case {
                name: "float32 rounding of probabilities is equal",
                original: vec![("probabilities", nums(&[0.2, 0.8, 0.6, 0.4])), ("label", labs(&["1", "0"]))],
                onnx: vec![("probabilities", nums(&[0.2000001, 0.7999999, 0.6, 0.4])), ("label", nums(&[1.0, 0.0]))],
                rows: 2,
                tolerance: t,
                equal: true,
                outside: 0,
                worst_row: Some(0),
            },
            Case {
                name: "a flipped tree branch is not",
                original: vec![("probabilities", nums(&[0.2, 0.8, 0.6, 0.4, 0.5, 0.5]))],
                onnx: vec![("probabilities", nums(&[0.2, 0.8, 0.3, 0.7, 0.5, 0.5]))],
                rows: 3,
                tolerance: t,
                equal: false,
                outside: 1,
                worst_row: Some(1),
            },
            Case {
                name: "another label is a difference",
                original: vec![("probabilities", nums(&[0.1, 0.9])), ("label", labs(&["cat"]))],
                onnx: vec![("probabilities", nums(&[0.1, 0.9])), ("label", labs(&["dog"]))],
                rows: 1,
                tolerance: t,
                equal: false,
                outside: 1,
                worst_row: Some(0),
            },
            Case {
                name: "a tie may break either way",
                original: vec![("probabilities", nums(&[0.5, 0.5])), ("label", labs(&["0"]))],
                onnx: vec![("probabilities", nums(&[0.5000001, 0.4999999])), ("label", labs(&["1"]))],
                rows: 1,
                tolerance: t,
                equal: true,
                outside: 0,
                worst_row: Some(0),
            },
            Case {
                name: "a regressor within a relative tolerance",
                original: vec![("prediction", nums(&[1000.0, 2.0]))],
                onnx: vec![("prediction", nums(&[1000.004, 2.0]))],
                rows: 2,
                tolerance: Tolerance { absolute: 1e-5, relative: 1e-5 },
                equal: true,
                outside: 0,
                worst_row: Some(0),
            },
            Case {
                name: "NaN against a number is a difference",
                original: vec![("prediction", nums(&[1.0]))],
                onnx: vec![("prediction", nums(&[f64::NAN]))],
                rows: 1,
                tolerance: t,
                equal: false,
                outside: 1,
                worst_row: Some(0),
            },
        ];
        for case in cases {
            let pairs: Vec<Pair<'_>> = case
                .original
                .iter()
                .zip(&case.onnx)
                .map(|((name, original), (_, onnx))| Pair { name, original, onnx })
                .collect();
            let v = judge(&pairs, case.rows, case.tolerance, &|row| format!("row{row}")).unwrap();
            assert_eq!(v.equal(), case.equal, "{}", case.name);
            assert_eq!(v.rows_outside, case.outside, "{}", case.name);
            assert_eq!(v.worst.first().map(|w| w.row), case.worst_row, "{}", case.name);
            assert!(v.worst.iter().all(|w| w.inputs == format!("row{}", w.row)), "{}", case.name);
        }
    }

    #[test]
    fn outputs_that_do_not_line_up_are_an_error() {
        let (a, b) = (nums(&[1.0, 2.0]), nums(&[1.0]));
        let e = judge(&[Pair { name: "prediction", original: &a, onnx: &b }], 2, Tolerance::default(), &|_| String::new()).unwrap_err();
        assert!(e.contains("2 values from the original and 1"), "{e}");
    }

    #[test]
    fn the_worst_rows_come_first_and_are_at_most_five() {
        let original = nums(&(0..20).map(|i| i as f64).collect::<Vec<_>>());
        let onnx = nums(&(0..20).map(|i| i as f64 + if i % 2 == 0 { 0.001 * i as f64 } else { 0.0 }).collect::<Vec<_>>());
        let v = judge(&[Pair { name: "prediction", original: &original, onnx: &onnx }], 20, Tolerance::default(), &|_| String::new()).unwrap();
        assert_eq!(v.worst.iter().map(|w| w.row).collect::<Vec<_>>(), vec![18, 16, 14, 12, 10]);
        assert_eq!(v.rows_outside, 9);
        assert!(v.worst_rows_table().lines().count() == 5);
    }
}
