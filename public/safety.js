// The safety code: a short code both people in a call can compare by voice. Each browser
// computes it from the two DTLS fingerprints of the call (its own description's and the
// other side's), which are what each browser checks the other's encryption key against. The
// server relays those fingerprints inside the SDP, so a server (or anyone who controls it)
// that put itself in the middle would have to give each browser a fingerprint of its own:
// the two browsers would then compute different codes. Same words on both sides: the media
// is encrypted end to end between these two browsers. No module imports, so Node's tests
// load it as it is.

/** 256 short, distinct words: four of them carry 32 bits of the digest. */
export const WORDS = [
  'acid', 'acorn', 'actor', 'adult', 'agent', 'alarm', 'album', 'alien', 'amber', 'angel', 'ankle',
  'apple', 'apron', 'arena', 'arrow', 'atlas', 'attic', 'award', 'bacon', 'badge', 'bagel',
  'baker', 'banjo', 'barn', 'basil', 'beach', 'beard', 'bench', 'berry', 'bingo', 'birch', 'bison',
  'blade', 'blank', 'blaze', 'blimp', 'bloom', 'board', 'bonus', 'boots', 'brain', 'brick',
  'bride', 'brush', 'bucket', 'buddy', 'bugle', 'cabin', 'cable', 'cactus', 'camel', 'candy',
  'canoe', 'cargo', 'castle', 'cedar', 'chalk', 'chart', 'cheese', 'cherry', 'chess', 'chief',
  'cider', 'circus', 'clay', 'cliff', 'clock', 'cloud', 'clover', 'coach', 'cobra', 'cocoa',
  'comet', 'coral', 'corn', 'cotton', 'couch', 'cowboy', 'crane', 'crown', 'dairy', 'daisy',
  'dancer', 'delta', 'denim', 'desert', 'dingo', 'doctor', 'donkey', 'dragon', 'drum', 'eagle',
  'earth', 'easel', 'echo', 'elbow', 'ember', 'engine', 'falcon', 'farmer', 'feather', 'fence',
  'ferry', 'fiddle', 'finch', 'flag', 'flame', 'flute', 'forest', 'fossil', 'fox', 'frost',
  'garden', 'garlic', 'gecko', 'ghost', 'giant', 'ginger', 'glove', 'goose', 'grape', 'gravel',
  'guitar', 'hammer', 'harbor', 'harp', 'hazel', 'helmet', 'hippo', 'honey', 'hornet', 'hotel',
  'igloo', 'island', 'ivory', 'jacket', 'jaguar', 'jelly', 'jester', 'jewel', 'judge', 'juice',
  'jungle', 'kayak', 'kettle', 'kiwi', 'koala', 'ladder', 'lagoon', 'lamp', 'laser', 'lemon',
  'lily', 'lime', 'lizard', 'llama', 'locket', 'lotus', 'magnet', 'mango', 'maple', 'marble',
  'meadow', 'melon', 'metal', 'mint', 'mirror', 'monkey', 'moose', 'motor', 'muffin', 'nectar',
  'needle', 'nickel', 'noodle', 'oasis', 'ocean', 'olive', 'onion', 'orbit', 'orchid', 'otter',
  'oyster', 'paddle', 'panda', 'paper', 'parrot', 'peach', 'peanut', 'pearl', 'pebble', 'pencil',
  'pepper', 'piano', 'pickle', 'pigeon', 'pilot', 'pirate', 'planet', 'plum', 'pocket', 'poem',
  'pony', 'poppy', 'potato', 'puzzle', 'quartz', 'quilt', 'rabbit', 'radar', 'radio', 'raven',
  'ribbon', 'river', 'robin', 'rocket', 'ruby', 'saddle', 'salmon', 'sandal', 'saturn', 'scarf',
  'shovel', 'silver', 'sketch', 'spider', 'sponge', 'squid', 'storm', 'sugar', 'summer', 'sunset',
  'swan', 'tablet', 'tango', 'teapot', 'temple', 'tiger', 'toast', 'tomato', 'torch', 'tulip',
  'tunnel', 'turtle', 'valley', 'velvet', 'violin', 'wagon', 'walnut', 'walrus', 'whale', 'wizard',
  'yacht', 'yogurt', 'zebra', 'zipper',
];

/** The first DTLS fingerprint an SDP announces (browsers send one for the whole session). */
export function fingerprintOf(sdp) {
  return /^a=fingerprint:(.+)$/m.exec(sdp ?? '')?.[1].trim() ?? null;
}

/** `sha-256 ab:cd…` and `SHA-256 AB:CD…` are the same fingerprint. */
function normalized(fingerprint) {
  const [algorithm, value] = fingerprint.split(/\s+/);
  return value ? `${algorithm.toLowerCase()} ${value.toUpperCase()}` : null;
}

/**
 * The code for a call whose descriptions are `localSdp` and `remoteSdp`: four words, the
 * same on both sides (the two fingerprints are sorted, so who offered does not matter), or
 * null while either description has no fingerprint.
 */
export async function safetyCode(localSdp, remoteSdp) {
  const local = fingerprintOf(localSdp);
  const remote = fingerprintOf(remoteSdp);
  if (!local || !remote) return null;
  const both = [normalized(local), normalized(remote)];
  if (both.includes(null)) return null;
  const input = new TextEncoder().encode(`dialtone safety code\n${both.sort().join('\n')}`);
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', input));
  return [...digest.slice(0, 4)].map((byte) => WORDS[byte]).join(' ');
}
