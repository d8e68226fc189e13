// vlmadapt: adapting frozen vision-language models (CLIP and its kin) in C++.
#pragma once
#include <vlmadapt/checkpoint.h>
#include <vlmadapt/clip.h>
#include <vlmadapt/error.h>
#include <vlmadapt/image.h>
#include <vlmadapt/safetensors.h>
#include <vlmadapt/tokenizer.h>
