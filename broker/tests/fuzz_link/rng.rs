//! A small deterministic generator (SplitMix64), so every input is the same on
//! every machine given its seed and index, with no dependency to pin.

pub struct Rng(u64);

impl Rng {
    /// The generator of input `index` under `seed`: inputs do not depend on
    /// each other, so any one can be made again alone.
    pub fn for_input(seed: u64, index: u64) -> Rng {
        let mut rng = Rng(seed ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next();
        rng
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True once in `n` times on average.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next().is_multiple_of(n)
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    pub fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.byte()).collect()
    }

    /// A u16, often one of the values at the edges.
    pub fn edgy_u16(&mut self) -> u16 {
        if self.one_in(3) {
            self.next() as u16
        } else {
            *self.pick(&[
                0, 1, 2, 10, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xfffe, 0xffff,
            ])
        }
    }

    /// A u32, often one of the values at the edges.
    pub fn edgy_u32(&mut self) -> u32 {
        if self.one_in(3) {
            self.next() as u32
        } else {
            *self.pick(&[
                0,
                1,
                2,
                60,
                0x7fff_ffff,
                0x8000_0000,
                68_719_477,
                0xffff_fffe,
                0xffff_ffff,
            ])
        }
    }
}
