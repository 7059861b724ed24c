// `sqlx::migrate!` embeds the migrations at compile time, but cargo does not
// know the files are inputs: without this a new migration is left out until
// something else changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
