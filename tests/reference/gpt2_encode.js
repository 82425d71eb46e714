#!/usr/bin/env node
// Reference GPT-2 token ids from the npm package gpt-3-encoder, for tests/unit/tokenizer_test.cc.
//
// Usage: node gpt2_encode.js <gpt-3-encoder package dir> <text file>...
//        node gpt2_encode.js --versions
// For each text file (read as UTF-8, as node does: invalid bytes become U+FFFD) prints one line: a
// JSON array of the ids the package's encode() gives for the file's whole text.
// --versions prints one JSON line {"node": "v20.20.2", "unicode": "17.0", "icu": "78.2"}: the
// Unicode version is the one node's regular expressions use for \p{L} and \p{N} (from its ICU),
// which decides how characters assigned in recent Unicode versions are split into words.
//
// encode() concatenates its output arrays one word at a time, which is quadratic in the number of
// tokens (a minute for 200 KB). So the text is first split with the package's own regex and
// encode() is called on runs of about 1024 whole matches, each run ending with a match whose last
// character is not whitespace. Re-splitting such a run gives exactly the same matches as the full
// text: the regex has no look-behind, and its only look-ahead, (?!\S), applies to whitespace
// matches, none of which ends a run (at a run's end, a whitespace match would merge with the
// whitespace matches before it, e.g. " " and "\u202F"). So the ids equal those of encode(text).
'use strict';
const fs = require('fs');
const path = require('path');

if (process.argv.length === 3 && process.argv[2] === '--versions') {
  const v = process.versions;
  process.stdout.write(JSON.stringify({ node: process.version, unicode: v.unicode || '', icu: v.icu || '' }) + '\n');
  process.exit(0);
}
if (process.argv.length < 4) {
  process.stderr.write('usage: node gpt2_encode.js <gpt-3-encoder dir> <text file>...\n' +
                       '       node gpt2_encode.js --versions\n');
  process.exit(2);
}
const { encode } = require(path.resolve(process.argv[2], 'Encoder.js'));
const pat = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;
for (const file of process.argv.slice(3)) {
  const text = fs.readFileSync(file, 'utf8');
  const matches = Array.from(text.matchAll(pat), (m) => m[0]);
  const ids = [];
  let start = 0;
  for (let i = 0; i < matches.length; i++) {
    const last = i + 1 === matches.length;
    if (last || (i + 1 - start >= 1024 && !/\s$/u.test(matches[i]))) {
      for (const id of encode(matches.slice(start, i + 1).join(''))) ids.push(id);
      start = i + 1;
    }
  }
  process.stdout.write(JSON.stringify(ids) + '\n');
}
