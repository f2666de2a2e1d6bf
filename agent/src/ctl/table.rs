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
                    .map(|r| r.get(i).map_or(0, String::len))
                    .chain([self.columns[i].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let line = |cells: &[String]| {
            let mut out = cells
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ");
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
