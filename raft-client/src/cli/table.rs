//! A small aligned-table formatter for `raftctl`'s human-readable output.

/// Longest cell shown, in characters; longer ones are cut with `…`.
pub const CELL_CHARS_MAX: usize = 80;

/// Rows of cells printed in left-aligned columns separated by two spaces.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
    has_header: bool,
}

impl Table {
    /// A table whose first line is `header`.
    pub fn new<I, S>(header: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut table = Self { rows: Vec::new(), has_header: true };
        table.rows.push(header.into_iter().map(|h| cell(h.as_ref())).collect());
        table
    }

    /// A table without a header line (for `field value` lists).
    pub fn without_header() -> Self {
        Self { rows: Vec::new(), has_header: false }
    }

    /// Adds a row; cells are escaped (control characters shown as `\n`, `\t`, `\u{..}`) and
    /// cut to [`CELL_CHARS_MAX`].
    pub fn row<I, S>(&mut self, cells: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.rows.push(cells.into_iter().map(|c| cell(c.as_ref())).collect());
        self
    }

    /// Whether the table has no row besides its header.
    pub fn is_empty(&self) -> bool {
        self.rows.len() == usize::from(self.has_header)
    }

    /// The table as text, one line per row, each ending with `\n`, without trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in &self.rows {
            for (i, c) in row.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(c);
                let pad = widths[i] - c.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A cell's text: control characters escaped, at most [`CELL_CHARS_MAX`] characters.
fn cell(text: &str) -> String {
    let mut escaped: Vec<char> = Vec::new();
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
        if escaped.len() > CELL_CHARS_MAX {
            escaped.truncate(CELL_CHARS_MAX - 1);
            escaped.push('…');
            break;
        }
    }
    escaped.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns_columns_and_trims_line_ends() {
        let mut t = Table::new(["ID", "NAME", "NOTE"]);
        t.row(["1", "alpha", ""]).row(["200", "β", "x"]);
        assert_eq!(t.render(), "ID   NAME   NOTE\n1    alpha\n200  β      x\n");
        assert!(!t.is_empty());
        assert!(Table::new(["A"]).is_empty());
    }

    #[test]
    fn escapes_control_characters_and_cuts_long_cells() {
        let mut t = Table::without_header();
        t.row(["a\nb\tc"]);
        assert_eq!(t.render(), "a\\nb\\tc\n");
        let fits = "y".repeat(CELL_CHARS_MAX);
        let mut t = Table::without_header();
        t.row([fits.as_str()]);
        assert_eq!(t.render(), format!("{fits}\n"));
        let long = "x".repeat(200);
        let mut t = Table::without_header();
        t.row([long.as_str()]);
        let line = t.render();
        assert_eq!(line.trim_end().chars().count(), CELL_CHARS_MAX);
        assert!(line.trim_end().ends_with('…'));
    }
}
