// vlmadapt: adapting frozen vision-language models (CLIP and its kin) in C++.
#pragma once
#include <vlmadapt/backbone/checkpoint.h>
#include <vlmadapt/backbone/clip.h>
#include <vlmadapt/core/error.h>
#include <vlmadapt/data/image.h>
#include <vlmadapt/core/safetensors.h>
#include <vlmadapt/backbone/tokenizer.h>
