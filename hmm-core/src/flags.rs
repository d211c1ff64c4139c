//! Flag-set types.
//!
//! With the default `bitflags` feature the flag types of this crate are made
//! by the `bitflags` crate. Without it (the Rust-for-Linux build, which has no
//! registry crates) the same macro input expands to a small dependency-free
//! definition with the same API subset: `empty`, `all`, `bits`,
//! `from_bits_truncate`, `from_bits_retain`, `contains`, `intersects`,
//! `is_empty`, `insert`, `remove`, `set`, `union`, `intersection`,
//! `difference`, `complement` and the bit operators. Both definitions are
//! tested by CI (`cargo test -p hmm-core --no-default-features`).

#[cfg(feature = "bitflags")]
macro_rules! hmm_bitflags {
    ($($t:tt)*) => { bitflags::bitflags! { $($t)* } };
}

#[cfg(not(feature = "bitflags"))]
macro_rules! hmm_bitflags {
    (
        $(#[$outer:meta])*
        $vis:vis struct $Name:ident: $T:ty {
            $(
                $(#[$inner:meta])*
                const $Flag:ident = $value:expr;
            )*
        }
    ) => {
        $(#[$outer])*
        $vis struct $Name($T);

        #[allow(dead_code)]
        impl $Name {
            $(
                $(#[$inner])*
                pub const $Flag: Self = Self($value);
            )*

            /// The set with no flag.
            pub const fn empty() -> Self {
                Self(0)
            }
            /// The set with every defined flag.
            pub const fn all() -> Self {
                Self(0 $(| $value)*)
            }
            /// The raw bits.
            pub const fn bits(&self) -> $T {
                self.0
            }
            /// The set from raw bits, dropping undefined bits.
            pub const fn from_bits_truncate(bits: $T) -> Self {
                Self(bits & Self::all().0)
            }
            /// The set from raw bits, keeping undefined bits.
            pub const fn from_bits_retain(bits: $T) -> Self {
                Self(bits)
            }
            /// The set from raw bits, or `None` if an undefined bit is set.
            pub const fn from_bits(bits: $T) -> Option<Self> {
                if bits & !Self::all().0 == 0 {
                    Some(Self(bits))
                } else {
                    None
                }
            }
            /// Whether no flag is set.
            pub const fn is_empty(&self) -> bool {
                self.0 == 0
            }
            /// Whether every flag of `other` is set.
            pub const fn contains(&self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }
            /// Whether any flag of `other` is set.
            pub const fn intersects(&self, other: Self) -> bool {
                self.0 & other.0 != 0
            }
            /// Set the flags of `other`.
            pub fn insert(&mut self, other: Self) {
                self.0 |= other.0;
            }
            /// Clear the flags of `other`.
            pub fn remove(&mut self, other: Self) {
                self.0 &= !other.0;
            }
            /// Set or clear the flags of `other`.
            pub fn set(&mut self, other: Self, value: bool) {
                if value {
                    self.insert(other)
                } else {
                    self.remove(other)
                }
            }
            /// Union.
            #[must_use]
            pub const fn union(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }
            /// Intersection.
            #[must_use]
            pub const fn intersection(self, other: Self) -> Self {
                Self(self.0 & other.0)
            }
            /// Flags of `self` not in `other`.
            #[must_use]
            pub const fn difference(self, other: Self) -> Self {
                Self(self.0 & !other.0)
            }
            /// Defined flags not in `self`.
            #[must_use]
            pub const fn complement(self) -> Self {
                Self(!self.0 & Self::all().0)
            }
        }

        impl core::ops::BitOr for $Name {
            type Output = Self;
            fn bitor(self, rhs: Self) -> Self {
                self.union(rhs)
            }
        }
        impl core::ops::BitOrAssign for $Name {
            fn bitor_assign(&mut self, rhs: Self) {
                self.insert(rhs)
            }
        }
        impl core::ops::BitAnd for $Name {
            type Output = Self;
            fn bitand(self, rhs: Self) -> Self {
                self.intersection(rhs)
            }
        }
        impl core::ops::BitAndAssign for $Name {
            fn bitand_assign(&mut self, rhs: Self) {
                self.0 &= rhs.0;
            }
        }
        impl core::ops::Sub for $Name {
            type Output = Self;
            fn sub(self, rhs: Self) -> Self {
                self.difference(rhs)
            }
        }
        impl core::ops::Not for $Name {
            type Output = Self;
            fn not(self) -> Self {
                self.complement()
            }
        }
    };
}
