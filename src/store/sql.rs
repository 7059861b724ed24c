//! Statement builders shared by the store's files: bind placeholders for
//! generated statements, multi-row inserts, and `IN (…)` look-ups in chunks.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{Any, AnyConnection, Arguments};

use super::Backend;

/// Rows per multi-row statement and values per `IN (…)` list: far below the
/// parameter limits of both backends.
pub const CHUNK: usize = 400;

/// Bind placeholders for generated statements. SQLite gets anonymous `?`:
/// sqlx looks up every named parameter by name, which is quadratic in the
/// number of parameters. Such statements must not also use `$N`.
pub fn placeholders(backend: Backend, start: usize, count: usize) -> String {
    match backend {
        Backend::Sqlite => vec!["?"; count].join(", "),
        Backend::Postgres => (start..start + count)
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Adds one bind value to a generated statement's arguments.
pub fn add<'q, T>(args: &mut AnyArguments<'q>, value: T)
where
    T: 'q + sqlx::Encode<'q, Any> + sqlx::Type<Any>,
{
    // Encoding into AnyArguments only fails for types Any cannot hold (none
    // of ours); the statement then fails with a clear error instead.
    if let Err(e) = args.add(value) {
        tracing::error!(error = %e, "A value could not be bound.");
    }
}

/// A multi-row insert: `head VALUES (…), (…) tail`.
pub struct Insert<'a> {
    pub head: &'a str,
    pub tail: &'a str,
    /// Values per row.
    pub width: usize,
}

/// Most bytes of data per generated statement (as the caller estimates).
const MAX_STATEMENT_BYTES: usize = 8 * 1024 * 1024;

impl Insert<'_> {
    /// Writes `rows`, bound by `bind`, in statements of at most `CHUNK` rows
    /// and about `MAX_STATEMENT_BYTES` of data (as `size` estimates it).
    pub async fn run<T>(
        &self,
        conn: &mut AnyConnection,
        backend: Backend,
        rows: &[T],
        size: impl Fn(&T) -> usize,
        bind: impl Fn(&mut AnyArguments<'_>, &T),
    ) -> Result<(), sqlx::Error> {
        let mut start = 0;
        while start < rows.len() {
            let mut end = start;
            let mut bytes = 0;
            while end < rows.len()
                && end - start < CHUNK
                && (end == start || bytes + size(&rows[end]) <= MAX_STATEMENT_BYTES)
            {
                bytes += size(&rows[end]);
                end += 1;
            }
            // A power of two of rows: the same few statement texts recur,
            // so the connection's statement cache saves parsing them again
            // (a statement of 256 rows costs SQLite ~0.5 M instructions to
            // prepare).
            let end = start + fixed_size(end - start);
            let chunk = &rows[start..end];
            let values: Vec<String> = (0..chunk.len())
                .map(|r| {
                    let start = r * self.width + 1;
                    format!("({})", placeholders(backend, start, self.width))
                })
                .collect();
            let sql = format!("{} VALUES {} {}", self.head, values.join(", "), self.tail);
            let mut args = AnyArguments::default();
            for row in chunk {
                bind(&mut args, row);
            }
            sqlx::query_with(&sql, args).execute(&mut *conn).await?;
            start = end;
        }
        Ok(())
    }
}

/// An `IN` list of `n` values padded (with its last value: the same list)
/// to a power of two, or `CHUNK`, so few statement texts recur.
fn padded_len(n: usize) -> usize {
    n.next_power_of_two().min(CHUNK).max(n)
}

/// The largest power of two not over `n` (n ≥ 1).
fn fixed_size(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
}

/// Runs `template` (with one `{}` where the `IN` list goes) for `values`, a
/// chunk at a time, and collects the rows.
pub async fn select_in<T, V>(
    conn: &mut AnyConnection,
    backend: Backend,
    template: &str,
    values: &[V],
) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin,
    V: for<'q> sqlx::Encode<'q, Any> + sqlx::Type<Any> + Clone + Send + 'static,
{
    let mut out = Vec::new();
    for chunk in values.chunks(CHUNK) {
        // Padded to a power of two with its last value (the same `IN`
        // list), so the statement text recurs and stays cached.
        let padded = padded_len(chunk.len());
        let sql = template.replacen("{}", &placeholders(backend, 1, padded), 1);
        let mut query = sqlx::query_as::<_, T>(&sql);
        for value in chunk {
            query = query.bind(value.clone());
        }
        for _ in chunk.len()..padded {
            query = query.bind(chunk[chunk.len() - 1].clone());
        }
        out.extend(query.fetch_all(&mut *conn).await?);
    }
    Ok(out)
}

/// Runs the statement `template` (with one `{}` where the `IN` list goes)
/// for `values`, a chunk at a time.
pub async fn execute_in<V>(
    conn: &mut AnyConnection,
    backend: Backend,
    template: &str,
    values: &[V],
) -> Result<(), sqlx::Error>
where
    V: for<'q> sqlx::Encode<'q, Any> + sqlx::Type<Any> + Clone + Send + 'static,
{
    for chunk in values.chunks(CHUNK) {
        let padded = padded_len(chunk.len());
        let sql = template.replacen("{}", &placeholders(backend, 1, padded), 1);
        let mut query = sqlx::query(&sql);
        for value in chunk.iter().chain(std::iter::repeat_n(
            &chunk[chunk.len() - 1],
            padded - chunk.len(),
        )) {
            query = query.bind(value.clone());
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

/// Bind values for a statement assembled from optional parts (a filtered
/// list): each `push` binds a value and returns its placeholder.
pub struct Binds<'q> {
    backend: Backend,
    pub args: AnyArguments<'q>,
    count: usize,
}

impl<'q> Binds<'q> {
    pub fn new(backend: Backend) -> Binds<'q> {
        Binds {
            backend,
            args: AnyArguments::default(),
            count: 0,
        }
    }

    pub fn push<T>(&mut self, value: T) -> String
    where
        T: 'q + sqlx::Encode<'q, Any> + sqlx::Type<Any>,
    {
        add(&mut self.args, value);
        self.count += 1;
        placeholders(self.backend, self.count, 1)
    }
}

/// A `LIKE … ESCAPE '\'` pattern for `text` anywhere, lower-cased, with the
/// wildcards in it taken literally.
pub fn contains_pattern(text: &str) -> String {
    let escaped = text
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

#[cfg(test)]
mod sizes {
    use super::*;

    #[test]
    fn statement_sizes_come_from_a_small_set() {
        assert_eq!(fixed_size(1), 1);
        assert_eq!(fixed_size(255), 128);
        assert_eq!(fixed_size(256), 256);
        assert_eq!(fixed_size(400), 256);
        assert_eq!(padded_len(3), 4);
        assert_eq!(padded_len(300), CHUNK);
        assert_eq!(padded_len(CHUNK), CHUNK);
    }
}
