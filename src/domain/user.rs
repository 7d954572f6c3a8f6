//! Users: phone numbers, names, and what registration accepts.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{bounded_text, Invalid, UserId};

/// A phone number: an optional `+` then 6 to 15 digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Phone(String);

impl Phone {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let digits = s.strip_prefix('+').unwrap_or(s);
        if !(6..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Invalid::new(
                "phone must be 6 to 15 digits, optionally starting with +",
            ));
        }
        Ok(Phone(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stored user. The password hash never leaves the service layer.
#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub phone: String,
    pub name: String,
    pub gender: Option<String>,
    pub age: Option<i32>,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
}

/// A user to insert, already validated and with the password hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub phone: Phone,
    pub name: String,
    pub gender: Option<String>,
    pub age: Option<i32>,
    pub password_hash: String,
}

/// Validates a display name.
pub fn check_name(name: &str) -> Result<(), Invalid> {
    bounded_text("name", name.trim(), 1, 64)
}

/// Validates a password before hashing (lengths only; no composition rules).
pub fn check_password(password: &str) -> Result<(), Invalid> {
    bounded_text("password", password, 8, 128)
}

/// Validates the optional profile fields.
pub fn check_profile(gender: Option<&str>, age: Option<i32>) -> Result<(), Invalid> {
    if let Some(g) = gender {
        if !matches!(g, "male" | "female" | "other") {
            return Err(Invalid::new("gender must be male, female or other"));
        }
    }
    if let Some(a) = age {
        if !(1..=150).contains(&a) {
            return Err(Invalid::new("age must be between 1 and 150"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_accepts_digits_and_a_leading_plus() {
        assert!(Phone::parse("13800138000").is_ok());
        assert!(Phone::parse("+8613800138000").is_ok());
    }

    #[test]
    fn phone_refuses_letters_short_and_long_numbers() {
        for bad in [
            "",
            "12345",
            "1380013800a",
            "+",
            "1234567890123456",
            "++123456",
        ] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn password_and_name_lengths_are_bounded() {
        assert!(check_password("short").is_err());
        assert!(check_password("long enough").is_ok());
        assert!(check_password(&"x".repeat(129)).is_err());
        assert!(check_name("  ").is_err());
        assert!(check_name("Li Lei").is_ok());
    }

    #[test]
    fn profile_refuses_unknown_gender_and_absurd_age() {
        assert!(check_profile(Some("robot"), None).is_err());
        assert!(check_profile(None, Some(0)).is_err());
        assert!(check_profile(Some("female"), Some(30)).is_ok());
    }
}
