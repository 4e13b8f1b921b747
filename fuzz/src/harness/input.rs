//! Turns fuzz input bytes into decisions: which value of a dictionary,
//! how long a list, which edge case. An exhausted input reads as zeros, so
//! every byte string is a valid input and short inputs mean simple values.

/// A cursor over fuzz input bytes.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// The bytes not read yet.
    pub fn rest(self) -> &'a [u8] {
        self.data
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        match n {
            0 | 1 => 0,
            2..=256 => usize::from(self.byte()) % n,
            _ => (usize::from(self.byte()) << 8 | usize::from(self.byte())) % n,
        }
    }

    /// True with probability `n`/256.
    pub fn chance(&mut self, n: u8) -> bool {
        self.byte() < n
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())].clone()
    }

    /// Up to `max` bytes.
    pub fn bytes(&mut self, max: usize) -> &'a [u8] {
        let n = self.below(max + 1).min(self.data.len());
        let (taken, rest) = self.data.split_at(n);
        self.data = rest;
        taken
    }

    fn raw_u64(&mut self) -> u64 {
        let mut v = 0u64;
        for _ in 0..8 {
            v = v << 8 | u64::from(self.byte());
        }
        v
    }

    /// Mostly small or edge values, sometimes any.
    pub fn u64(&mut self) -> u64 {
        match self.byte() % 8 {
            0..=3 => u64::from(self.byte()),
            4 => [0, 1, 2, u64::from(u32::MAX), i64::MAX as u64, u64::MAX][self.below(6)],
            5 => u64::from(self.byte()) << 8 | u64::from(self.byte()),
            _ => self.raw_u64(),
        }
    }

    pub fn i64(&mut self) -> i64 {
        match self.byte() % 8 {
            0..=3 => i64::from(self.byte()) * 1_000_000,
            4 => [0, 1, -1, i64::MAX, i64::MIN, i64::MAX - 1, i64::MIN + 1][self.below(7)],
            5 => -i64::from(self.byte()),
            _ => self.raw_u64() as i64,
        }
    }

    pub fn u32(&mut self) -> u32 {
        match self.byte() % 4 {
            0 | 1 => u32::from(self.byte()),
            2 => [0, 1, 100, 1000, 1001, u32::MAX, i32::MAX as u32][self.below(7)],
            _ => self.raw_u64() as u32,
        }
    }

    pub fn i32(&mut self) -> i32 {
        match self.byte() % 4 {
            0 | 1 => i32::from(self.byte() as i8),
            2 => [
                0,
                1,
                -1,
                i32::MAX,
                i32::MIN,
                999_999_999,
                -999_999_999,
                1_000_000_000,
                -1_000_000_000,
            ][self.below(9)],
            _ => self.raw_u64() as i32,
        }
    }

    /// An enum number: mostly one of `0..=max`, sometimes outside.
    pub fn enum_value(&mut self, max: i32) -> i32 {
        if self.chance(224) {
            self.below(max as usize + 1) as i32
        } else {
            self.i32()
        }
    }

    pub fn f64(&mut self) -> f64 {
        match self.byte() % 4 {
            0 | 1 => f64::from(self.byte()) * 1000.5,
            2 => [
                0.0,
                -0.0,
                -1.0,
                f64::NAN,
                f64::INFINITY,
                f64::NEG_INFINITY,
                f64::MAX,
                f64::MIN_POSITIVE,
            ][self.below(8)],
            _ => f64::from_bits(self.raw_u64()),
        }
    }

    /// Text: mostly a word of `good`, else one of `bad`, a mangled word, or
    /// arbitrary characters.
    pub fn text(&mut self, good: &[&str], bad: &[&str]) -> String {
        match self.byte() % 16 {
            0..=9 if !good.is_empty() => self.pick(good).to_owned(),
            10 | 11 if !bad.is_empty() => self.pick(bad).to_owned(),
            12 => {
                let all: Vec<&str> = good.iter().chain(bad).copied().collect();
                let word = if all.is_empty() {
                    String::new()
                } else {
                    self.pick(&all).to_owned()
                };
                self.mangle(word)
            }
            13 => {
                const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-. abcz";
                let n = self.below(10);
                (0..n).map(|_| char::from(self.pick(ALPHABET))).collect()
            }
            14 => String::from_utf8_lossy(self.bytes(16)).into_owned(),
            _ => {
                let unit = self.pick(&["A", "9", "é", "€", "😀", " ", "\u{0}", "\u{202e}"]);
                unit.repeat(self.pick(&[0, 1, 3, 63, 64, 65, 199, 200, 201, 500, 501, 2000]))
            }
        }
    }

    fn mangle(&mut self, word: String) -> String {
        let mut chars: Vec<char> = word.chars().collect();
        match self.byte() % 6 {
            0 => chars.iter().map(|c| c.to_ascii_lowercase()).collect(),
            1 => {
                chars.pop();
                chars.into_iter().collect()
            }
            2 => {
                let at = self.below(chars.len() + 1);
                chars.insert(at, self.pick(&['0', 'A', '-', ' ', 'é', '€', '\n', ',', '"']));
                chars.into_iter().collect()
            }
            3 => format!(" {word} "),
            4 => format!("{word}{word}"),
            _ => {
                if !chars.is_empty() {
                    let at = self.below(chars.len());
                    chars[at] = self.pick(&['9', 'Z', '€', '\u{0}', 'ß']);
                }
                chars.into_iter().collect()
            }
        }
    }

    /// A list of `make()`, mostly short.
    pub fn list<T>(&mut self, max: usize, mut make: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = match self.byte() % 8 {
            0..=2 => 0,
            3..=5 => 1,
            _ => self.below(max + 1),
        };
        (0..n).map(|_| make(self)).collect()
    }

    /// Mutates an encoding the way a fuzzer would: flips, inserts, deletes,
    /// truncates, duplicates or splices bytes.
    pub fn mutate(&mut self, mut bytes: Vec<u8>) -> Vec<u8> {
        let n = self.below(4);
        for _ in 0..n {
            let len = bytes.len();
            match self.byte() % 7 {
                0 if len > 0 => {
                    let at = self.below(len);
                    bytes[at] ^= 1 << (self.byte() % 8);
                }
                1 => {
                    let at = self.below(len + 1);
                    let b = self.byte();
                    bytes.insert(at, b);
                }
                2 if len > 0 => {
                    let at = self.below(len);
                    bytes.remove(at);
                }
                3 => bytes.truncate(self.below(len + 1)),
                4 if len > 0 => {
                    let from = self.below(len);
                    let to = from + self.below(len - from + 1);
                    let copy = bytes[from..to].to_vec();
                    bytes.extend_from_slice(&copy);
                }
                5 if len > 0 => {
                    let at = self.below(len);
                    bytes[at] = self.pick(&[0x00, 0x7f, 0x80, 0xff, 0x0a, 0x12, 0x08, 0x1a]);
                }
                _ => {
                    let extra = self.bytes(8).to_vec();
                    bytes.extend_from_slice(&extra);
                }
            }
        }
        bytes
    }
}
