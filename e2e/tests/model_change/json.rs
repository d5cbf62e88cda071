//! A minimal JSON reader for the worker's answers.

/// The little JSON these tests read from the worker's answers (the crate has no
/// dependencies, so no serde_json).
#[derive(Debug, PartialEq)]
pub(crate) enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

const NULL: Json = Json::Null;

impl Json {
    pub(crate) fn parse(text: &str) -> Json {
        let mut parser = JsonParser {
            text: text.as_bytes(),
            at: 0,
        };
        let value = parser.value();
        parser.space();
        if parser.at != text.len() {
            parser.fail("trailing characters");
        }
        value
    }

    /// The field `key` of an object; `Null` when absent or not an object.
    pub(crate) fn get(&self, key: &str) -> &Json {
        match self {
            Json::Object(fields) => fields
                .iter()
                .find(|(k, _)| k == key)
                .map_or(&NULL, |(_, v)| v),
            _ => &NULL,
        }
    }

    pub(crate) fn str(&self) -> Option<&str> {
        match self {
            Json::String(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn number(&self) -> Option<f64> {
        match self {
            Json::Number(n) => Some(*n),
            _ => None,
        }
    }

    /// The items of an array; none when not an array.
    pub(crate) fn items(&self) -> &[Json] {
        match self {
            Json::Array(items) => items,
            _ => &[],
        }
    }
}

struct JsonParser<'a> {
    text: &'a [u8],
    at: usize,
}

impl JsonParser<'_> {
    fn fail(&self, what: &str) -> ! {
        panic!(
            "malformed JSON ({what}) at byte {}: {}",
            self.at,
            String::from_utf8_lossy(self.text)
        )
    }

    fn space(&mut self) {
        while self.text.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        self.space();
        let found = self.text.get(self.at) == Some(&byte);
        if found {
            self.at += 1;
        }
        found
    }

    fn expect(&mut self, byte: u8) {
        if !self.eat(byte) {
            self.fail(&format!("expected {}", byte as char));
        }
    }

    fn value(&mut self) -> Json {
        self.space();
        match self.text.get(self.at) {
            Some(b'{') => {
                self.at += 1;
                let mut fields = Vec::new();
                if !self.eat(b'}') {
                    loop {
                        self.space();
                        let key = self.string();
                        self.expect(b':');
                        fields.push((key, self.value()));
                        if self.eat(b'}') {
                            break;
                        }
                        self.expect(b',');
                    }
                }
                Json::Object(fields)
            }
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                if !self.eat(b']') {
                    loop {
                        items.push(self.value());
                        if self.eat(b']') {
                            break;
                        }
                        self.expect(b',');
                    }
                }
                Json::Array(items)
            }
            Some(b'"') => Json::String(self.string()),
            Some(b't') => self.word("true", Json::Bool(true)),
            Some(b'f') => self.word("false", Json::Bool(false)),
            Some(b'n') => self.word("null", Json::Null),
            Some(_) => self.number(),
            None => self.fail("unexpected end"),
        }
    }

    fn word(&mut self, word: &str, value: Json) -> Json {
        if !self.text[self.at..].starts_with(word.as_bytes()) {
            self.fail("unknown word");
        }
        self.at += word.len();
        value
    }

    fn number(&mut self) -> Json {
        let start = self.at;
        while matches!(
            self.text.get(self.at),
            Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
        ) {
            self.at += 1;
        }
        let number = std::str::from_utf8(&self.text[start..self.at])
            .ok()
            .and_then(|n| n.parse().ok());
        Json::Number(number.unwrap_or_else(|| self.fail("not a number")))
    }

    fn string(&mut self) -> String {
        if self.text.get(self.at) != Some(&b'"') {
            self.fail("expected a string");
        }
        self.at += 1;
        let mut bytes = Vec::new();
        loop {
            match self.text.get(self.at).copied() {
                None => self.fail("unterminated string"),
                Some(b'"') => break,
                Some(b'\\') => {
                    let escape = self.text.get(self.at + 1).copied();
                    self.at += 2;
                    let c = match escape {
                        Some(b'n') => '\n',
                        Some(b't') => '\t',
                        Some(b'r') => '\r',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'u') => self.unicode(),
                        Some(c @ (b'"' | b'\\' | b'/')) => c as char,
                        _ => self.fail("unknown escape"),
                    };
                    bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                Some(byte) => {
                    bytes.push(byte);
                    self.at += 1;
                }
            }
        }
        self.at += 1;
        String::from_utf8(bytes).unwrap_or_else(|_| self.fail("invalid UTF-8"))
    }

    /// The character of a `\u` escape (its four digits next), a surrogate pair joined.
    fn unicode(&mut self) -> char {
        let first = self.hex4();
        let code = if (0xD800..0xDC00).contains(&first) && self.text[self.at..].starts_with(b"\\u")
        {
            self.at += 2;
            let low = self.hex4();
            0x10000 + ((first - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3FF)
        } else {
            first
        };
        char::from_u32(code).unwrap_or('\u{FFFD}')
    }

    fn hex4(&mut self) -> u32 {
        let digits = self.text.get(self.at..self.at + 4);
        let code = digits
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u32::from_str_radix(d, 16).ok());
        let code = code.unwrap_or_else(|| self.fail("bad \\u escape"));
        self.at += 4;
        code
    }
}
