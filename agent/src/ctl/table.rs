//! The one renderer every view goes through: a view is a list of typed rows,
//! serialized as they are for JSON and condensed into cells for the table.

use serde::Serialize;

/// One row of a view. Its JSON is the struct serialized (every detail, for scripts
/// and tests: the field order is the key order); its table line is [`Row::cells`]
/// (the same facts, condensed for people).
pub trait Row: Serialize {
    /// The table's column headers, as printed.
    const HEADERS: &'static [&'static str];

    /// One cell per header.
    fn cells(&self) -> Vec<String>;
}

/// The rows as a JSON array, one object per row.
pub fn to_json<R: Row>(rows: &[R]) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(rows)
}

/// The rows as a table aligned on the widest cell of each column, or `(none)`.
pub fn to_table<R: Row>(rows: &[R]) -> String {
    if rows.is_empty() {
        return "(none)\n".to_owned();
    }
    let cells: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    let widths: Vec<usize> = R::HEADERS
        .iter()
        .enumerate()
        .map(|(i, header)| {
            cells
                .iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .fold(header.chars().count(), usize::max)
        })
        .collect();
    // Padded by hand: `format!("{c:<w$}")` panics once a width passes
    // u16::MAX (a Service with thousands of backends has such a cell).
    let line = |cells: &[&str]| {
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
    let mut out = line(R::HEADERS);
    for row in &cells {
        let row: Vec<&str> = row.iter().map(String::as_str).collect();
        out.push_str(&line(&row));
    }
    out
}

/// An optional value's cell, written as its JSON shows it (`null` when absent):
/// the table has always said `null` there, and people grep for it.
pub(super) fn or_null(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "null".to_owned(), |v| v.to_string())
}

/// A list's cell, joined by `sep`, or `-` when empty.
pub(super) fn or_dash(items: &[impl AsRef<str>], sep: &str) -> String {
    if items.is_empty() {
        return "-".to_owned();
    }
    items.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Pair {
        name: String,
        value: String,
    }

    impl Row for Pair {
        const HEADERS: &'static [&'static str] = &["NAME", "VALUE"];

        fn cells(&self) -> Vec<String> {
            vec![self.name.clone(), self.value.clone()]
        }
    }

    fn pair(name: &str, value: &str) -> Pair {
        Pair {
            name: name.to_owned(),
            value: value.to_owned(),
        }
    }

    #[test]
    fn columns_align_on_the_widest_cell_or_header() {
        let table = to_table(&[pair("a", "1"), pair("longer-than-name", "")]);
        assert_eq!(
            table,
            "NAME              VALUE\n\
             a                 1\n\
             longer-than-name\n"
        );
    }

    #[test]
    fn a_short_column_is_as_wide_as_its_header() {
        let table = to_table(&[pair("x", "y")]);
        assert_eq!(table, "NAME  VALUE\nx     y\n");
    }

    #[test]
    fn an_empty_view_says_none() {
        assert_eq!(to_table::<Pair>(&[]), "(none)\n");
        assert_eq!(to_json::<Pair>(&[]).ok().as_deref(), Some("[]"));
    }

    #[test]
    fn cells_of_any_width_render() {
        let huge = "10.0.0.1:8080 ".repeat(10_000);
        let table = to_table(&[pair("10.96.0.1:80/TCP", &huge), pair("x", "z")]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains(huge.trim_end()));
        // Columns line up: the second column starts at the same byte in each row.
        let at = |line: &str, what: &str| line.find(what).expect(what);
        assert_eq!(at(lines[0], "VALUE"), at(lines[2], "z"));
    }

    #[test]
    fn json_is_the_rows_serialized_in_field_order() {
        let json = to_json(&[pair("a", "1")]).ok();
        assert_eq!(
            json.as_deref(),
            Some("[\n  {\n    \"name\": \"a\",\n    \"value\": \"1\"\n  }\n]")
        );
    }

    #[test]
    fn absent_values_and_empty_lists_have_cells() {
        assert_eq!(or_null(None::<u32>), "null");
        assert_eq!(or_null(Some(7)), "7");
        assert_eq!(or_dash(&[] as &[&str], ","), "-");
        assert_eq!(or_dash(&["a", "b"], ","), "a,b");
    }
}
