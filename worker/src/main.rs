fn main() {
    println!("cuda devices: {}", tch::Cuda::device_count());
}
