//! The sentence around an answer: what a chat shows so a reader can judge the answer.

/// The sentence (by `.`, `!`, `?` followed by whitespace, or line breaks) containing the character
/// span `[start, end)`, as character offsets.
pub fn sentence_around(context: &str, start: usize, end: usize) -> (usize, usize) {
    let chars: Vec<char> = context.chars().collect();
    let (start, end) = (start.min(chars.len()), end.min(chars.len()));
    let boundary = |i: usize| {
        // A sentence ends at i when chars[i] ends one and whitespace follows.
        chars[i] == '\n'
            || (matches!(chars[i], '.' | '!' | '?')
                && chars.get(i + 1).is_none_or(|c| c.is_whitespace()))
    };
    let mut s = start;
    while s > 0 && !boundary(s - 1) {
        s -= 1;
    }
    while s < start && chars[s].is_whitespace() {
        s += 1;
    }
    let from = end.max(s + 1).min(chars.len()).saturating_sub(1);
    let mut e = (from..chars.len())
        .find(|&i| boundary(i))
        .map_or(chars.len(), |i| i + 1);
    while e > s && chars[e - 1].is_whitespace() {
        e -= 1;
    }
    (s, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentence_is_found_around_the_answer() {
        let text = "Paris is big. The tower was built in 1889. It is tall!";
        let start = text.find("1889").unwrap();
        let (s, e) = sentence_around(text, start, start + 4);
        assert_eq!(&text[s..e], "The tower was built in 1889.");
        let (s, e) = sentence_around(text, 0, 5);
        assert_eq!(&text[s..e], "Paris is big.");
        let (s, e) = sentence_around(text, text.len() - 3, text.len() - 1);
        assert_eq!(&text[s..e], "It is tall!");
    }
}
