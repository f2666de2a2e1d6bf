//! Rendering a view as JSON or as an aligned table.

use serde_json::Value;

pub struct View {
    /// One JSON value per row, with every detail.
    pub json: Vec<Value>,
    pub columns: Vec<&'static str>,
    /// Table cells, one row per JSON row (or more, when a row wraps).
    pub rows: Vec<Vec<String>>,
}

impl View {
    /// A view whose table shows every (flat) field of the JSON rows, in the first
    /// row's key order.
    pub fn flat(json: Vec<Value>, columns: Vec<&'static str>) -> Self {
        let cell = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        let rows = json
            .iter()
            .map(|r| columns.iter().map(|c| cell(&r[*c])).collect())
            .collect();
        Self { json, columns, rows }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.json).unwrap_or_else(|e| format!("\"{e}\""))
    }

    pub fn to_table(&self) -> String {
        if self.rows.is_empty() {
            return "(none)\n".to_owned();
        }
        let widths: Vec<usize> = (0..self.columns.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                    .chain([self.columns[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        // Padded by hand: `format!("{c:<w$}")` panics once a width passes
        // u16::MAX (a Service with thousands of backends has such a cell).
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
                if i > 0 {
                    out.push_str("  ");
                }
                out.push_str(c);
                out.extend(std::iter::repeat_n(' ', w.saturating_sub(c.chars().count())));
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
            out
        };
        let header: Vec<String> = self.columns.iter().map(|c| c.to_uppercase()).collect();
        let mut out = line(&header);
        for row in &self.rows {
            out.push_str(&line(row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn cells_of_any_width_render() {
        let huge = "10.0.0.1:8080 ".repeat(10_000);
        let view = View {
            json: vec![json!({})],
            columns: vec!["frontend", "backends", "flags"],
            rows: vec![
                vec!["10.96.0.1:80/TCP".into(), huge.clone(), "-".into()],
                vec!["x".into(), "y".into(), "z".into()],
            ],
        };
        let table = view.to_table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains(huge.trim_end()));
        // Columns line up: the third column starts at the same byte in each row.
        let at = |line: &str, what: &str| line.find(what).expect(what);
        assert_eq!(at(lines[0], "FLAGS"), at(lines[2], "z"));
    }
}
