/**
 * LICENSES.md for the built dataset: where each image set comes from, under
 * which licence, the attribution Twemoji asks for, and what was changed.
 */
import { SOURCE_PACKAGES, type EmojiSet } from './sources.ts';

export const TWEMOJI_ATTRIBUTION =
  'Twemoji graphics: Copyright 2019 Twitter, Inc and other contributors (https://github.com/twitter/twemoji); ' +
  'Copyright 2022-present Jason Sofonia & Justine De Caires and other contributors (https://github.com/jdecked/twemoji). ' +
  'Graphics licensed under CC-BY 4.0: https://creativecommons.org/licenses/by/4.0/';

const EMOJI_DATA_MIT = `The MIT License (MIT)

Copyright (c) 2013 Cal Henderson

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.`;

const CHANGES =
  'Changes made by Lethe: the 64x64 PNG renderings shipped by emoji-data were composited onto a white background, ' +
  'downscaled to 32x32 with a 2x2 box filter and stored as float16 tensors in [-1, 1]; ' +
  'captions were generated from the emoji names and short names.';

/**
 * The licence file text. `emojiDataLicense` is the package's own LICENSE
 * text when the source tree has one (the embedded MIT text otherwise).
 */
export function licensesMarkdown(sets: readonly EmojiSet[], counts: Readonly<Partial<Record<EmojiSet, number>>>, emojiDataLicense?: string): string {
  const lines: string[] = [
    '# lethe-mini training images: licences',
    '',
    'This dataset is built by `build/mini/dataset.ts` from the emoji-data project\'s npm packages',
    '(https://github.com/iamcal/emoji-data). The images keep the licences of their artwork; the',
    'metadata (names, short names, categories) comes from emoji-data under the MIT licence.',
    '',
    CHANGES,
    '',
  ];
  if (sets.includes('google')) {
    const p = SOURCE_PACKAGES.google;
    lines.push(
      `## Noto Emoji (set \`google\`, ${counts.google ?? 0} images)`,
      '',
      `- Source package: \`${p.name}@${p.version}\` (Noto Emoji v2.048, https://github.com/googlefonts/noto-emoji)`,
      '- Licence: **Apache License 2.0** (SPDX `Apache-2.0`), https://www.apache.org/licenses/LICENSE-2.0',
      '- Copyright Google LLC and the Noto Emoji contributors. Per the Noto Emoji repository, flag images taken from',
      '  its `third_party/region-flags` are in the public domain or otherwise exempt from copyright.',
      '- The `google` images of this dataset are Derivative Works of Noto Emoji images; see "Changes made" above.',
      '',
    );
  }
  if (sets.includes('twitter')) {
    const p = SOURCE_PACKAGES.twitter;
    lines.push(
      `## Twemoji (set \`twitter\`, ${counts.twitter ?? 0} images)`,
      '',
      `- Source package: \`${p.name}@${p.version}\` (Twemoji fork v16.0.1, https://github.com/jdecked/twemoji)`,
      '- Licence: **Creative Commons Attribution 4.0 International** (SPDX `CC-BY-4.0`),',
      '  https://creativecommons.org/licenses/by/4.0/ (legal code: https://creativecommons.org/licenses/by/4.0/legalcode)',
      '- Required attribution (reproduce it wherever these images, or a model trained on them, are distributed):',
      '',
      `  > ${TWEMOJI_ATTRIBUTION}`,
      '',
      '- The images were modified; see "Changes made" above. No endorsement by Twitter, X Corp. or the Twemoji',
      '  maintainers is implied.',
      '',
    );
  }
  lines.push('## emoji-data metadata (MIT)', '', '```', (emojiDataLicense ?? EMOJI_DATA_MIT).trim(), '```', '');
  return lines.join('\n');
}
