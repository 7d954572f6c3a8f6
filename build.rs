// `sqlx::migrate!` embeds the migrations at compile time: a new migration
// must rebuild the crate (sqlx's documented way).
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
